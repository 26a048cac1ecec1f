"""Joining a relay session on ``/v1/relay`` and the byte stream it gives (docs/relay.md).

Each stream is its own WebSocket, so a big transfer never blocks presence or
signaling on ``/v1/ws``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from handoffd.errors import ServerError
from handoffd.serverlink import reach
from handoffd.serverlink.http import ServerHttp, fingerprint_mismatch
from handoffd.wire import auth
from handoffd.wire.messages import RelayTicket, bad_response, json_message, server_error

__all__ = ["MAX_RELAY_FRAME", "RelayStream", "join_relay"]

MAX_RELAY_FRAME = 128 * 1024
_ENDED = (
    aiohttp.WSMsgType.CLOSE,
    aiohttp.WSMsgType.CLOSING,
    aiohttp.WSMsgType.CLOSED,
    aiohttp.WSMsgType.ERROR,
)


class RelayStream:
    """One side of a started relay session: opaque binary messages both ways.

    ``recv`` returns None once the stream ended; ``error`` then holds the
    server's reason (``relay-peer-closed``, ``relay-idle-timeout``,
    ``relay-byte-quota``, ...) or ``relay-lost``.
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, ticket: RelayTicket) -> None:
        self._ws = ws
        self.ticket = ticket
        self.error: ServerError | None = None
        self.stall_timeout = 60.0
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once the stream ended or was closed."""
        return self._closed or self._ws.closed

    async def control(self) -> dict[str, Any]:
        """The next control message before the start (server errors raised)."""
        msg = await self._ws.receive()
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise self._ended(msg) or ServerError("relay closed", code="relay-lost")
        data = json_message(msg.data, "relay message")
        if data.get("type") == "error":
            raise server_error(data)
        return data

    def _ended(self, msg: aiohttp.WSMessage) -> ServerError | None:
        if msg.type in _ENDED:
            self._closed = True
            if self.error is None:
                self.error = ServerError("the relay connection was lost", code="relay-lost")
            return self.error
        return None

    async def send(self, data: bytes) -> None:
        """Send one binary message (≤ 128 KiB); waits while the socket's buffer is full."""
        if len(data) > MAX_RELAY_FRAME:
            raise ServerError("relay frame is too large", code="relay-frame-too-large")
        if self.closed:
            raise self.error or ServerError("relay stream is closed", code="relay-lost")
        try:
            async with asyncio.timeout(self.stall_timeout):
                await self._ws.send_bytes(data)
        except TimeoutError:
            raise ServerError("the relay stopped taking data", code="relay-send-stalled") from None
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            self._closed = True
            raise self.error or ServerError(
                "the relay connection was lost", code="relay-lost"
            ) from exc

    async def recv(self) -> bytes | None:
        """The next binary message, or None once the stream ended (see ``error``)."""
        while True:
            msg = await self._ws.receive()
            if msg.type == aiohttp.WSMsgType.BINARY:
                data: bytes = msg.data
                return data
            if self._ended(msg) is not None:
                return None
            if msg.type == aiohttp.WSMsgType.TEXT:
                try:
                    data_obj = json_message(msg.data, "relay message")
                except ServerError as exc:
                    self.error = exc
                    await self.close()
                    return None
                if data_obj.get("type") == "error":
                    self.error = server_error(data_obj)

    async def close(self) -> None:
        """Close the WebSocket (idempotent)."""
        self._closed = True
        if not self._ws.closed:
            with contextlib.suppress(aiohttp.ClientError, ConnectionError, TimeoutError):
                async with asyncio.timeout(2):
                    await self._ws.close()


async def join_relay(
    http: ServerHttp, key: Ed25519PrivateKey, ticket: RelayTicket, *, deadline: float
) -> RelayStream:
    """Join ``ticket``'s session on ``/v1/relay`` by ``deadline`` (loop time); returns once both sides are in.

    ServerError with the server's code (``relay-unknown``, ``relay-forbidden``,
    ``relay-token-used``, ``relay-peer-absent``, ...), or ``server-*``.
    """
    session = http.session()
    try:
        async with asyncio.timeout_at(deadline):
            ws = await session.ws_connect(
                http.ws_url("/v1/relay"),
                ssl=http.ssl,
                heartbeat=None,
                max_msg_size=MAX_RELAY_FRAME,
                autoping=True,
                compress=0,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
            )
    except aiohttp.ServerFingerprintMismatch:
        raise fingerprint_mismatch() from None
    except aiohttp.WSServerHandshakeError as exc:
        code = "rate-limited" if exc.status == 429 else "server-ws-refused"
        raise ServerError(f"relay refused with HTTP {exc.status}", code=code) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise reach.unreachable(http.url, exc) from exc
    except TimeoutError:
        raise ServerError("relay connect timed out", code="server-unreachable") from None
    stream = RelayStream(ws, ticket)
    try:
        async with asyncio.timeout_at(deadline):
            try:
                challenge = auth.parse_challenge(await stream.control())
            except ValueError:
                raise bad_response("relay challenge") from None
            answer = auth.auth_message(key, challenge, session=ticket.session, token=ticket.token)
            await ws.send_json(answer)
            joined = await stream.control()
            if joined.get("type") != "relay-joined" or joined.get("peer") != ticket.peer:
                raise bad_response("relay join answer")
            started = await stream.control()
            if started.get("type") != "relay-start":
                raise bad_response("relay start")
    except TimeoutError:
        await stream.close()
        raise ServerError("the relay session did not start in time", code="relay-timeout") from None
    except (aiohttp.ClientError, ConnectionError, OSError) as exc:
        await stream.close()
        raise ServerError("lost the relay connection", code="relay-lost") from exc
    except BaseException:
        await stream.close()
        raise
    return stream
