"""The device's WebSocket to its server (``/v1/ws``): presence in, signals both ways, relay tickets.

Authenticates with the shared challenge (``handoffd.wire.auth``), reconnects
with jittered backoff, and stops for good on an error retrying cannot fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from handoffd import backoff, identity
from handoffd.errors import ServerError
from handoffd.serverlink import reach
from handoffd.serverlink.http import ServerHttp, fingerprint_mismatch
from handoffd.wire import auth
from handoffd.wire.messages import (
    MAX_SIGNAL,
    RelayTicket,
    bad_response,
    json_message,
    parse_online,
    parse_relay_ticket,
    parse_signal,
    server_error,
)

__all__ = ["FATAL_CODES", "ServerLink"]

logger = logging.getLogger("handoffd.serverlink")

MAX_WS_MESSAGE = 512 * 1024
HEARTBEAT = 20.0
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
# After these the link stops reconnecting: retrying cannot help.
FATAL_CODES = frozenset(
    {
        "device-revoked",
        "auth-invalid",
        "device-unknown",
        "cert-expired",
        "server-fingerprint-mismatch",
    }
)


class ServerLink:
    """The device's WebSocket to the server: presence in, signals both ways; reconnects with backoff.

    ``online`` is the set of the account's online device ids (this device
    included) while connected, empty otherwise; ``on_presence`` is called on
    every change. ``on_signal(from_device, envelope)`` gets forwarded envelopes.
    ``on_error`` gets errors the server reports about our messages (e.g.
    ``target-unavailable``) and the fatal error that stops the link
    (``device-revoked``, ...), also kept in ``last_error``.
    """

    def __init__(
        self,
        http: ServerHttp,
        key: Ed25519PrivateKey,
        on_presence: Callable[[frozenset[str]], None],
        on_signal: Callable[[str, bytes], None],
        on_error: Callable[[ServerError], None] | None,
        on_relay: Callable[[RelayTicket], None] | None = None,
    ) -> None:
        self._http = http
        self._key = key
        self._on_presence = on_presence
        self._on_signal = on_signal
        self._on_error = on_error
        self._on_relay = on_relay
        self._pending: dict[str, asyncio.Future[RelayTicket]] = {}
        self._next_id = 0
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self.online: frozenset[str] = frozenset()
        self.last_error: ServerError | None = None

    @property
    def connected(self) -> bool:
        """True while authenticated on a live WebSocket."""
        return self._connected.is_set()

    async def start(self) -> None:
        """Start the connect/reconnect loop (returns at once; see wait_connected)."""
        if self._task is None and not self._closing:
            self._task = asyncio.create_task(self._run(), name="serverlink")

    async def wait_connected(self) -> None:
        """Wait until connected (wrap in ``asyncio.timeout``); raise the link's error if it stopped."""
        while not self._connected.is_set():
            task = self._task
            if task is None or task.done():
                raise self.last_error or ServerError(
                    "not connected to the server", code="server-offline"
                )
            waiter = asyncio.ensure_future(self._connected.wait())
            try:
                await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()

    async def send_signal(self, to_device: str, envelope: bytes) -> None:
        """Forward an opaque signed envelope to another online device of the account."""
        if len(envelope) > MAX_SIGNAL:
            raise ServerError("signal is too large", code="signal-too-large")
        await self._send({"type": "signal", "to": to_device, "data": auth.b64e(envelope)})

    async def open_relay(self, to_device: str, *, deadline: float | None = None) -> RelayTicket:
        """Ask the server for a relay session to ``to_device``; the ticket to join it.

        ServerError: ``target-unavailable``, ``relay-too-many``, ``rate-limited``,
        ``server-offline``, ``relay-timeout``.
        """
        to_device = identity.parse_device_id(to_device)
        self._next_id += 1
        ref = f"relay-{self._next_id}"
        future: asyncio.Future[RelayTicket] = asyncio.get_running_loop().create_future()
        self._pending[ref] = future
        try:
            await self._send({"type": "relay-open", "to": to_device, "id": ref})
            loop = asyncio.get_running_loop()
            async with asyncio.timeout_at(
                loop.time() + self._http.timeout if deadline is None else deadline
            ):
                return await future
        except TimeoutError:
            raise ServerError("no relay ticket in time", code="relay-timeout") from None
        finally:
            self._pending.pop(ref, None)

    async def close_relay(self, session: str) -> None:
        """Decline or abandon a relay session not joined (best effort, never raises ServerError)."""
        with contextlib.suppress(ServerError):
            await self._send({"type": "relay-close", "session": session})

    def _fail_pending(self, error: ServerError) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)

    async def _send(self, message: dict[str, Any]) -> None:
        ws = self._ws
        if ws is None or ws.closed or not self.connected:
            raise ServerError("not connected to the server", code="server-offline")
        try:
            async with asyncio.timeout(self._http.timeout):
                await ws.send_str(json.dumps(message, separators=(",", ":")))
        except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
            raise ServerError("lost the server connection", code="server-offline") from exc

    async def close(self) -> None:
        """Stop reconnecting and close the WebSocket (idempotent)."""
        self._closing = True
        ws = self._ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(aiohttp.ClientError, ConnectionError, TimeoutError):
                async with asyncio.timeout(2):
                    await ws.close()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # our own cancellation still goes through

    # ------------------------------------------------------------ the loop

    def _set_online(self, online: frozenset[str]) -> None:
        if online == self.online:
            return
        self.online = online
        try:
            self._on_presence(online)
        except Exception:
            logger.exception("presence callback failed")

    def _report(self, error: ServerError) -> None:
        if self._on_error is None:
            return
        try:
            self._on_error(error)
        except Exception:
            logger.exception("error callback failed")

    async def _run(self) -> None:
        failures = 0
        while not self._closing:
            started = time.monotonic()
            try:
                await self._session_once()
            except ServerError as exc:
                if exc.code in FATAL_CODES:
                    self.last_error = exc
                    logger.warning("server link stopped code=%s", exc.code)
                    self._report(exc)
                    self._connected.clear()
                    self._set_online(frozenset())
                    return
                self.last_error = exc
                logger.info("server link lost code=%s", exc.code)
            except (aiohttp.ClientError, ConnectionError, TimeoutError, OSError) as exc:
                self.last_error = reach.unreachable(self._http.url, exc)
                logger.info("server link lost error=%s", type(exc).__name__)
            finally:
                self._ws = None
                self._fail_pending(ServerError("lost the server connection", code="server-offline"))
            self._connected.clear()
            self._set_online(frozenset())
            if time.monotonic() - started > BACKOFF_MAX:
                failures = 0  # it had been up for a while: start again from the minimum
            failures += 1
            await asyncio.sleep(backoff.delay(failures, base=BACKOFF_MIN, cap=BACKOFF_MAX))

    async def _session_once(self) -> None:
        http = self._http
        session = http.session()
        try:
            async with asyncio.timeout(http.timeout):
                ws = await session.ws_connect(
                    http.ws_url("/v1/ws"),
                    ssl=http.ssl,
                    heartbeat=HEARTBEAT,
                    max_msg_size=MAX_WS_MESSAGE,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                )
        except aiohttp.ServerFingerprintMismatch:
            raise fingerprint_mismatch() from None
        except aiohttp.WSServerHandshakeError as exc:
            raise ServerError(
                f"WebSocket refused with HTTP {exc.status}", code="server-ws-refused"
            ) from None
        self._ws = ws
        try:
            async with asyncio.timeout(http.timeout):
                try:
                    challenge = auth.parse_challenge(await self._receive(ws))
                except ValueError:
                    raise bad_response("WebSocket challenge") from None
                await ws.send_str(json.dumps(auth.auth_message(self._key, challenge)))
                welcome = await self._receive(ws)
                if welcome.get("type") != "welcome":
                    raise bad_response("WebSocket welcome")
            self._connected.set()
            self._handle(welcome)
            while True:
                self._handle(await self._receive(ws))
        finally:
            self._connected.clear()
            with contextlib.suppress(aiohttp.ClientError, ConnectionError, TimeoutError):
                async with asyncio.timeout(2):
                    await ws.close()

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
        msg = await ws.receive()
        if msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSING,
            aiohttp.WSMsgType.CLOSED,
        ):
            raise ServerError("server closed the WebSocket", code="server-closed")
        if msg.type == aiohttp.WSMsgType.ERROR:
            raise ServerError("WebSocket error", code="server-closed")
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise bad_response("WebSocket frame")
        data = json_message(msg.data, "WebSocket message")
        if data["type"] == "error":
            exc = server_error(data)
            if exc.code in FATAL_CODES or data.get("fatal") is True:
                raise exc
            future = self._pending.get(data["ref"]) if isinstance(data.get("ref"), str) else None
            if future is not None:
                if not future.done():
                    future.set_exception(exc)
            else:
                self._report(exc)
        return data

    def _handle(self, data: dict[str, Any]) -> None:
        kind = data["type"]
        if kind in ("welcome", "presence"):
            online = parse_online(data)
            if online is not None:
                self._set_online(online)
        elif kind == "signal":
            signal = parse_signal(data)
            if signal is None:
                logger.warning("malformed signal from server")
                return
            try:
                self._on_signal(*signal)
            except Exception:
                logger.exception("signal callback failed")
        elif kind in ("relay-ticket", "relay-offer"):
            self._relay_message(data)
        # "pong", "error" (reported in _receive) and unknown types are ignored.

    def _relay_message(self, data: dict[str, Any]) -> None:
        ticket = parse_relay_ticket(data)
        if ticket is None:
            logger.warning("malformed relay message from server")
            return
        if ticket.initiator:
            ref = data.get("id")
            future = self._pending.get(ref) if isinstance(ref, str) else None
            if future is not None and not future.done():
                future.set_result(ticket)
            return
        if self._on_relay is None:
            return
        try:
            self._on_relay(ticket)
        except Exception:
            logger.exception("relay callback failed")
