"""Relay sessions: the server pipes opaque bytes between two online devices of one account.

Control travels on the device WebSocket (``/v1/ws``, see hub.py):

- initiator → ``{"type": "relay-open", "to": <device id>, "id"?}``
- server → target ``{"type": "relay-offer", "session", "token", "from", "expires_in"}``
- server → initiator ``{"type": "relay-ticket", "id", "session", "token", "to", "expires_in"}``
- either → ``{"type": "relay-close", "session", "id"?}`` (decline / give up)

Refusals are ``error`` frames with the request's ``id`` as ``ref``:
``target-unavailable`` (offline, unknown, foreign or own id: one answer),
``relay-too-many`` (the account's cap), ``rate-limited``.

Bytes travel on a dedicated WebSocket per side, ``/v1/relay``: the same
challenge as ``/v1/ws`` (``Hub.verify_device``), whose ``auth`` message also
carries ``session`` and ``token``. Then ``relay-joined {session, role, peer}``;
when both sides are in, ``relay-start``; after that only binary frames (each
≤ ``max_frame``) are accepted and forwarded unchanged to the other side. The
end is an ``error`` frame with the reason's code, then the close.

Tokens: one per side, 256 random bits, single use, valid ``token_ttl``
seconds, bound to the session's account and device. Only SHA-256 of a token
is kept. The relay never parses what it forwards: the devices run TLS 1.3
inside (``handoffd.transport.relay``).

Parts: ``relayconfig`` (limits), ``relaysession`` (the session record and
the byte pump), ``relaytable`` (the session table and join checks), this
module (quotas, control, joins and ending sessions).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterable
from typing import Any

from aiohttp import WSCloseCode, web

from handoffd.errors import ServerError
from handoffd.server import ratelimit
from handoffd.server.hub import Hub
from handoffd.server.ratelimit import LimiterFactory, limiter_factory, local_limiter
from handoffd.server.relaybus import pipe_elsewhere, verify_side
from handoffd.server.relayconfig import ENV_PREFIX as ENV_PREFIX
from handoffd.server.relayconfig import RelayConfig
from handoffd.server.relaysession import (
    CLOSE_TIMEOUT,
    MESSAGES,
    ROLE_INITIATOR,
    ROLE_TARGET,
    RelaySession,
    close_ws,
    pump,
    send_end,
    send_json,
    token_hash,
    watch,
)
from handoffd.server.relaytable import MAX_ENDED as MAX_ENDED
from handoffd.server.relaytable import SessionTable
from handoffd.server.wsconn import Conn, FrameError, error_frame
from handoffd.wire import auth

logger = logging.getLogger("handoffd.server.relay")

TOKEN_BYTES = 32
SESSION_BYTES = 16
CLOSE_QUOTA = 4008
CLOSE_REFUSED = 4009


class RelayHub:
    """Relay sessions of the whole server (see the module docstring)."""

    def __init__(
        self, hub: Hub, config: RelayConfig, limiters: LimiterFactory = local_limiter
    ) -> None:
        self._hub = hub
        self._config = config
        self._table = SessionTable()
        self._opens = limiters("relay-open", config.opens_per_minute, config.open_burst)
        self._join_failures = limiters(
            "relay-join",
            config.join_failures_per_minute,
            max(1, int(config.join_failures_per_minute)),
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        if config.tap_dir is not None:
            logger.warning("relay tap enabled dir=%s (tests only)", config.tap_dir)

    # ------------------------------------------------------------ introspection

    def devices(self) -> set[str]:
        """Every device taking part in a relay session now."""
        return self._table.devices()

    def holds(self, session_id: str) -> bool:
        """True while this instance holds the session (not ended)."""
        return self._table.get(session_id) is not None

    def stats(self, account_id: str) -> dict[str, int]:
        """The account's relay sessions: pending (not both joined), active, opened since start."""
        return self._table.stats(account_id)

    # ------------------------------------------------------------ control on /v1/ws

    async def on_hub_message(
        self, conn: Conn, kind: str, data: dict[str, Any], ref: object
    ) -> None:
        """Handle ``relay-open`` / ``relay-close`` from a device's main WebSocket."""
        if kind == "relay-open":
            await self._open(conn, data, ref)
        else:
            session_id = data.get("session")
            if not isinstance(session_id, str) or len(session_id) > 64:
                raise FrameError("relay-close needs a session")
            if self._table.get(session_id) is not None:
                await self.close_for(conn.account_id, conn.device_id, session_id)
            elif self._hub.bus is not None:  # bus: the session may be held by another instance
                await self._hub.bus.publish_relay_close(conn.account_id, conn.device_id, session_id)

    async def close_for(self, account_id: str, device_id: str, session_id: str) -> None:
        """End the session held here if the device is a party to it (in that account)."""
        session = self._table.get(session_id)
        if (
            session is not None
            and session.account_id == account_id
            and device_id in session.devices
        ):
            await self._end(session, "relay-closed")

    async def _open(self, conn: Conn, data: dict[str, Any], ref: object) -> None:
        hub, config = self._hub, self._config
        to = data.get("to")
        if not isinstance(to, str) or len(to) > 64:
            raise FrameError("relay-open needs to")
        loop = asyncio.get_running_loop()
        try:
            retry = await self._opens.acquire(conn.device_id, loop.time())
        except ServerError as exc:  # bus: Redis unreachable, fail closed
            await hub.send(conn, error_frame(exc.code, exc.message, ref=ref))
            return
        if retry:
            await hub.send(
                conn, error_frame("rate-limited", "too many relay requests; wait", ref=ref)
            )
            return
        target = None if to == conn.device_id else await hub.reachable(conn.account_id, to)
        if target is None:  # offline, unknown, foreign or own: one answer
            await hub.send(
                conn,
                error_frame(
                    "target-unavailable", "that device is not online in this account", ref=ref
                ),
            )
            return
        session_id = auth.b64e(secrets.token_bytes(SESSION_BYTES))
        try:
            full = self._table.live(
                conn.account_id
            ) >= config.max_per_account or not await self._count(conn.account_id, session_id)
        except ServerError as exc:  # bus: Redis unreachable, fail closed
            await hub.send(conn, error_frame(exc.code, exc.message, ref=ref))
            return
        if full:
            await hub.send(
                conn,
                error_frame(
                    "relay-too-many",
                    f"the account has {config.max_per_account} relay sessions already",
                    ref=ref,
                ),
            )
            return
        tokens = {
            ROLE_INITIATOR: auth.b64e(secrets.token_bytes(TOKEN_BYTES)),
            ROLE_TARGET: auth.b64e(secrets.token_bytes(TOKEN_BYTES)),
        }
        session = RelaySession(
            session_id=session_id,
            account_id=conn.account_id,
            initiator=conn.device_id,
            target=to,
            token_hashes={role: token_hash(t) for role, t in tokens.items()},
            expires_at=loop.time() + config.token_ttl,
        )
        self._table.add(session)
        session.watcher = self._spawn(
            watch(session, self._config, self._end), f"relay-watch-{session.session_id}"
        )
        logger.info(
            "relay session opened account=%s session=%s initiator=%s target=%s",
            session.account_id,
            session.session_id,
            session.initiator,
            session.target,
        )
        await hub.hold_relay(session.session_id, config.token_ttl)  # bus: joins may land elsewhere
        delivered = await hub.send(
            target,
            {
                "type": "relay-offer",
                "session": session.session_id,
                "token": tokens[ROLE_TARGET],
                "from": conn.device_id,
                "expires_in": config.token_ttl,
            },
        )
        if not delivered:
            await self._end(session, "relay-peer-absent")
            await hub.send(
                conn,
                error_frame(
                    "target-unavailable", "that device is not online in this account", ref=ref
                ),
            )
            return
        await hub.send(
            conn,
            {
                "type": "relay-ticket",
                "id": ref,
                "session": session.session_id,
                "token": tokens[ROLE_INITIATOR],
                "to": to,
                "expires_in": config.token_ttl,
            },
        )

    async def _count(self, account_id: str, session_id: str) -> bool:
        """With a bus: count the session against the account's cap on every instance."""
        bus = self._hub.bus
        if bus is None:
            return True
        return await bus.relay_quota_take(account_id, session_id, self._config.max_per_account)

    # ------------------------------------------------------------ /v1/relay

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/relay``: one side of one relay session, from challenge to close."""
        hub = self._hub
        if hub.closing:
            raise ServerError("server is shutting down", code="shutting-down", status=503)
        client = ratelimit.client_address(request)
        key = ratelimit.limit_key(client)
        loop = asyncio.get_running_loop()
        # Taken before the work (a failed device auth counts too), given back once joined.
        if await self._join_failures.acquire(key, loop.time()):
            raise ServerError("too many failed relay joins; wait", code="rate-limited", status=429)
        ws = web.WebSocketResponse(
            heartbeat=None,
            max_msg_size=self._config.max_frame,
            autoping=True,
            compress=False,
        )
        await ws.prepare(request)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            verified = await verify_side(hub, request, ws, client)  # bus: or piped from elsewhere
            if verified is None or await pipe_elsewhere(hub, ws, *verified, self._config.max_frame):
                return ws
            device, data = verified
            try:
                session, role = self._table.join(device.device_id, device.account_id, data)
            except ServerError as exc:
                logger.info(
                    "relay join refused code=%s device=%s client=%s",
                    exc.code,
                    device.device_id,
                    client,
                )
                await send_end(ws, exc.code, exc.message)
                await close_ws(ws, CLOSE_REFUSED, exc.code)
                return ws
            await self._join_failures.give_back(key, loop.time())
            await self._serve(session, role, ws)
        finally:
            if task is not None:
                self._tasks.discard(task)
            await close_ws(ws, WSCloseCode.OK, "")
        return ws

    async def _serve(self, session: RelaySession, role: str, ws: web.WebSocketResponse) -> None:
        peer = session.target if role == ROLE_INITIATOR else session.initiator
        session.sockets[role] = ws
        await send_json(
            ws,
            {"type": "relay-joined", "session": session.session_id, "role": role, "peer": peer},
        )
        if len(session.sockets) == 2:
            loop = asyncio.get_running_loop()
            session.started_at = session.last_activity = loop.time()
            for side in session.sockets.values():
                await send_json(side, {"type": "relay-start"})
            session.start.set()
            logger.info(
                "relay session started account=%s session=%s",
                session.account_id,
                session.session_id,
            )
        # Read from this side even before the start: a close or a stray frame ends it.
        reason = await pump(session, role, self._config)
        await self._end(session, reason)
        await session.finished.wait()

    async def _end(self, session: RelaySession, reason: str) -> None:
        """End ``session`` once: tell and close both sides, forget it."""
        if session.ended is not None:
            return
        session.ended = reason
        self._table.remove(session, reason)
        if session.watcher is not None and session.watcher is not asyncio.current_task():
            session.watcher.cancel()  # it has nothing left to watch
        if self._hub.bus is not None:  # bus: the account's cap on every instance
            await self._hub.bus.relay_quota_release(session.account_id, session.session_id)
        logger.info(
            "relay session ended account=%s session=%s reason=%s bytes=%d",
            session.account_id,
            session.session_id,
            reason,
            session.bytes,
        )
        code = WSCloseCode.OK if reason == "relay-peer-closed" else CLOSE_QUOTA
        if reason == "shutting-down":
            code = WSCloseCode.GOING_AWAY
        try:
            message = MESSAGES.get(reason, reason)
            await asyncio.gather(
                *(send_end(ws, reason, message) for ws in list(session.sockets.values()))
            )
            await asyncio.gather(
                *(close_ws(ws, code, reason) for ws in list(session.sockets.values()))
            )
        finally:
            session.finished.set()

    # ------------------------------------------------------------ revocation, shutdown

    async def disconnect_devices(self, device_ids: Iterable[str], reason: str) -> None:
        """End every session one of ``device_ids`` takes part in."""
        for session in self._table.of_devices(device_ids):
            await self._end(session, reason)

    async def close_all(self) -> None:
        """End every session and wait for the handlers (server shutdown)."""
        for session in self._table.all():
            await self._end(session, "shutting-down")
        tasks = list(self._tasks)
        for task in tasks:
            if task.get_name().startswith("relay-watch-"):
                task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT)

    # ------------------------------------------------------------ plumbing

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


RELAY: web.AppKey[RelayHub] = web.AppKey("handoff_relay", RelayHub)


def setup_relay(app: web.Application, hub: Hub, config: RelayConfig) -> RelayHub:
    """Create the relay, wire it into the hub and add ``/v1/relay`` (``/v1/relays`` is in api.py)."""
    relay = RelayHub(hub, config, limiter_factory(app))
    hub.relay = relay
    app[RELAY] = relay
    app.router.add_get("/v1/relay", relay.handle)
    return relay


__all__ = [
    "RELAY",
    "ROLE_INITIATOR",
    "ROLE_TARGET",
    "RelayConfig",
    "RelayHub",
    "setup_relay",
]
