"""The WebSocket hub at ``/v1/ws``: device auth by challenge, presence, signal forwarding.

One connection per online device (a newer one replaces an older one). JSON
text frames, each an object with a ``type``:

server → device: ``challenge {nonce}``, ``welcome {device_id, account_id, online}``,
``presence {online}``, ``signal {from, data}``, ``pong {id}``,
``error {error: {code, message}, ref?, fatal?}``.
device → server: ``auth {device_id, signature}``, ``signal {to, data, id?}``,
``ping {id?}``. Relay control (``relay-open``, ``relay-close``; server →
device ``relay-ticket``, ``relay-offer``) is handled by ``handoffd.server.relay``
when the app wires one in (``Hub.relay``); relay bytes never cross this socket
(``relay-data`` stays reserved and is answered ``unsupported``).

Signals go only to another online device of the SAME account; anything else
is ``target-unavailable`` (the same answer for offline, unknown and foreign
devices, so nothing leaks across accounts). A malformed frame gets a fatal
error and the connection is closed; the server keeps serving everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from aiohttp import WSCloseCode, web

from handoffd.errors import HandoffError, ServerError
from handoffd.server import wsauth
from handoffd.server.hubsignal import forward_signal
from handoffd.server.store import Device, Store
from handoffd.server.wsauth import (
    CLOSE_AUTH,
    CLOSE_REPLACED,
    CLOSE_REVOKED,
    SEND_TIMEOUT,
    close_ws,
    fatal,
    receive,
    send_ws,
)
from handoffd.server.wsconn import Conn, FrameError, RelayControl, RemoteDevice, error_frame

if TYPE_CHECKING:
    from handoffd.server.bus import RedisBus

logger = logging.getLogger("handoffd.server.hub")

MAX_MESSAGE = 512 * 1024
HEARTBEAT = 30.0
RESERVED = frozenset({"relay-open", "relay-data", "relay-close"})


class Hub:
    """Tracks online devices and forwards their messages (see the module docstring)."""

    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = clock
        self._conns: dict[str, Conn] = {}
        self._accounts: dict[str, set[str]] = {}
        self._handlers: set[asyncio.Task[Any]] = set()
        self._closing = False
        self.relay: RelayControl | None = None  # relay: set by make_app (handoffd.server.relay)
        self.bus: RedisBus | None = None  # bus: several instances (handoffd.server.bus)

    def online(self, account_id: str) -> frozenset[str]:
        """The account's online device ids (on every instance, with a bus)."""
        local = self.local_online(account_id)
        return local if self.bus is None else local | self.bus.online(account_id)

    async def online_now(self, account_id: str) -> frozenset[str]:
        """Like ``online``, read afresh from the bus when there is one."""
        if self.bus is not None:
            await self.bus.fetch(account_id)
        return self.online(account_id)

    # bus: the surface handoffd.server.bus uses
    def local_online(self, account_id: str) -> frozenset[str]:
        """The account's devices connected to this instance."""
        return frozenset(self._accounts.get(account_id, ()))

    def local_connections(self) -> list[Conn]:
        """Every connection this instance holds."""
        return list(self._conns.values())

    async def push_presence(self, account_id: str) -> None:
        """Tell this instance's devices of the account who is online."""
        await self._presence(account_id)

    async def deliver(self, account_id: str, to: str, message: dict[str, Any]) -> None:
        """A message from another instance for a device held here (same account only)."""
        target = self._conns.get(to)
        if target is not None and target.account_id == account_id:
            await self._send(target, message)

    async def moved_elsewhere(self, device_id: str) -> None:
        """The device connected to another instance: this (older) connection is replaced."""
        old = self._conns.get(device_id)
        if old is not None:
            await self._send(
                old, error_frame("replaced", "a newer connection took over", fatal=True)
            )
            await close_ws(old.ws, CLOSE_REPLACED, b"replaced")

    # relay: the small surface handoffd.server.relay uses
    @property
    def closing(self) -> bool:
        """True once the server is shutting down."""
        return self._closing

    def connection(self, device_id: str) -> Conn | None:
        """The online connection of ``device_id``, if any."""
        return self._conns.get(device_id)

    async def send(self, conn: Conn | RemoteDevice, message: dict[str, Any]) -> bool:
        """Send one message to an online device (False if it could not take it)."""
        if isinstance(conn, RemoteDevice):
            return self.bus is not None and await self.bus.deliver(conn, message)
        return await self._send(conn, message)

    async def reachable(self, account_id: str, device_id: str) -> Conn | RemoteDevice | None:
        """The device's connection here, or on another instance (bus), if online in the account."""
        conn = self._conns.get(device_id)
        if conn is not None:
            return conn if conn.account_id == account_id else None
        if self.bus is not None and await self.bus.is_online(account_id, device_id):
            return RemoteDevice(device_id, account_id)
        return None

    async def hold_relay(self, session_id: str, ttl: float) -> None:
        """Record that this instance holds a relay session (joins elsewhere are piped here)."""
        if self.bus is not None:
            await self.bus.hold_relay(session_id, ttl)

    @property
    def store(self) -> Store:
        """The store."""
        return self._store

    async def refuse(self, ws: web.WebSocketResponse, code: str, message: str) -> None:
        """A fatal error, then close (auth refusals)."""
        await fatal(ws, code, message, CLOSE_AUTH)

    # ------------------------------------------------------------ sending

    async def _send(self, conn: Conn, message: dict[str, Any]) -> bool:
        """Send one message; a peer too slow to take it within SEND_TIMEOUT is dropped."""
        if conn.ws.closed:
            return False
        try:
            async with conn.lock, asyncio.timeout(SEND_TIMEOUT):
                await conn.ws.send_str(json.dumps(message, separators=(",", ":")))
        except (ConnectionError, TimeoutError, RuntimeError):
            logger.info("dropping slow or gone connection device=%s", conn.device_id)
            await close_ws(conn.ws, WSCloseCode.GOING_AWAY, b"send failed")
            return False
        return True

    async def _presence(self, account_id: str, skip: Conn | None = None) -> None:
        online = sorted(self.online(account_id))
        conns = [c for d in online if (c := self._conns.get(d)) is not None and c is not skip]
        await asyncio.gather(
            *(self._send(c, {"type": "presence", "online": online}) for c in conns)
        )

    # ------------------------------------------------------------ the handler

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/ws``: one device's WebSocket, from challenge to close."""
        if self._closing:
            raise ServerError("server is shutting down", code="shutting-down", status=503)
        ws = web.WebSocketResponse(
            heartbeat=HEARTBEAT, max_msg_size=MAX_MESSAGE, autoping=True, compress=False
        )
        await ws.prepare(request)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            conn = await self._authenticate(ws, request.remote or "unknown")
            if conn is None:
                return ws
            try:
                await self._serve(conn)
            finally:
                await self._unregister(conn)
        finally:
            if task is not None:
                self._handlers.discard(task)
            await close_ws(ws, WSCloseCode.OK, b"")
        return ws

    async def _authenticate(self, ws: web.WebSocketResponse, client: str) -> Conn | None:
        verified = await self.verify_device(ws, client)
        if verified is None:
            return None
        device, _ = verified
        await asyncio.to_thread(self._store.touch_device, device.device_id)
        # From registering to taking the send lock for the welcome nothing awaits: presence
        # caused by other devices meanwhile queues behind the welcome (asyncio.Lock is FIFO),
        # so the welcome is always the first message after auth.
        conn = Conn(device.device_id, device.account_id, ws)
        if self.bus is not None:  # bus: before registering (nothing may await after that)
            await self.bus.device_online(conn)
        old = self._conns.get(conn.device_id)
        self._conns[conn.device_id] = conn
        self._accounts.setdefault(conn.account_id, set()).add(conn.device_id)
        logger.info("device online account=%s device=%s", conn.account_id, conn.device_id)
        await self._send(
            conn,
            {
                "type": "welcome",
                "device_id": conn.device_id,
                "account_id": conn.account_id,
                "online": sorted(self.online(conn.account_id)),
            },
        )
        if old is not None:  # after its welcome: the old socket's leaving changes no presence
            await self._send(
                old, error_frame("replaced", "a newer connection took over", fatal=True)
            )
            await close_ws(old.ws, CLOSE_REPLACED, b"replaced")
        await self._presence(conn.account_id, skip=conn)  # its welcome said it already
        if self.bus is not None:
            await self.bus.announce(conn, online=True)
        return conn

    async def verify_device(
        self, ws: web.WebSocketResponse, client: str
    ) -> tuple[Device, dict[str, Any]] | None:
        """Challenge, then check the device's ``auth`` answer (also used by /v1/relay).

        Returns the device and the whole auth message (callers may read more
        fields from it), or None after a refusal was sent and ``ws`` closed.
        """
        return await wsauth.verify_device(self._store, self._clock, ws, client)

    async def _serve(self, conn: Conn) -> None:
        while True:
            try:
                data = await receive(conn.ws)
                if data is None:
                    return
                await self._dispatch(conn, data)
            except FrameError as exc:
                logger.info("malformed frame device=%s code=%s", conn.device_id, exc.code)
                await fatal(conn.ws, exc.code, exc.message, WSCloseCode.POLICY_VIOLATION)
                return

    async def _dispatch(self, conn: Conn, data: dict[str, Any]) -> None:
        kind = data["type"]
        ref = data.get("id")
        if ref is not None and not (
            (isinstance(ref, str) and len(ref) <= 64) or (type(ref) is int and abs(ref) < 2**53)
        ):
            raise FrameError("id must be a short string or an integer")
        if kind == "ping":
            await self._send(conn, {"type": "pong", "id": ref})
        elif kind == "signal":
            await forward_signal(self, conn, data, ref)
        elif kind in ("relay-open", "relay-close") and self.relay is not None:  # relay
            await self.relay.on_hub_message(conn, kind, data, ref)
        elif kind in RESERVED:
            await self._send(conn, error_frame("unsupported", f"{kind} is not available", ref=ref))
        else:
            raise FrameError("unknown message type")

    async def _unregister(self, conn: Conn) -> None:
        if self._conns.get(conn.device_id) is not conn:
            return  # replaced by a newer connection: presence unchanged
        del self._conns[conn.device_id]
        devices = self._accounts.get(conn.account_id, set())
        devices.discard(conn.device_id)
        if not devices:
            self._accounts.pop(conn.account_id, None)
        logger.info("device offline account=%s device=%s", conn.account_id, conn.device_id)
        with contextlib.suppress(HandoffError):
            await asyncio.to_thread(self._store.touch_device, conn.device_id)
        if self.bus is not None:
            await self.bus.device_offline(conn)
        await self._presence(conn.account_id)
        if self.bus is not None:
            await self.bus.announce(conn, online=False)

    # ------------------------------------------------------------ revocation and shutdown

    async def disconnect_revoked(
        self, device_ids: Iterable[str], *, local_only: bool = False
    ) -> None:
        """Tell revoked devices and close their connections (and relay streams) at once.

        With a bus, every other instance is told too, unless ``local_only``.
        """
        device_ids = list(device_ids)
        if self.bus is not None and not local_only and device_ids:
            await self.bus.publish_revoked(device_ids)
        if self.relay is not None:  # relay
            await self.relay.disconnect_devices(device_ids, "device-revoked")
        for device_id in device_ids:
            conn = self._conns.get(device_id)
            if conn is None:
                continue
            logger.info("disconnecting revoked device device=%s", device_id)
            await send_ws(
                conn.ws, error_frame("device-revoked", "this device has been revoked", fatal=True)
            )
            await close_ws(conn.ws, CLOSE_REVOKED, b"device-revoked")

    async def check_revocations(self) -> None:
        """Disconnect online devices revoked by another process (the CLI)."""
        devices = set(self._conns)
        if self.relay is not None:  # relay: devices with relay streams may be offline here
            devices |= self.relay.devices()
        if not devices:
            return
        revoked = await asyncio.to_thread(self._store.revoked_among, sorted(devices))
        await self.disconnect_revoked(revoked, local_only=True)  # each instance polls itself

    async def watch(self, interval: float) -> None:
        """Poll the database for other writers' commits; check revocations when it changes."""
        seen = await asyncio.to_thread(self._store.data_version)
        while True:
            await asyncio.sleep(interval)
            try:
                version = await asyncio.to_thread(self._store.data_version)
                if version != seen:
                    seen = version
                    await self.check_revocations()
            except HandoffError as exc:
                logger.warning("revocation check failed code=%s", exc.code)

    async def close_all(self) -> None:
        """Close every connection (server shutdown) and wait for their handlers."""
        self._closing = True
        if self.relay is not None:  # relay
            await self.relay.close_all()
        await asyncio.gather(
            *(
                close_ws(c.ws, WSCloseCode.GOING_AWAY, b"server shutdown")
                for c in list(self._conns.values())
            )
        )
        handlers = list(self._handlers)
        if handlers:
            await asyncio.wait(handlers, timeout=5)
