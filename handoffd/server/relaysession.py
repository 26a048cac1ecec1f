"""One relay session and its byte path: the session record, the pump forwarding one side's frames, the watcher ending it, the socket helpers."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from handoffd.server.relayconfig import RelayConfig

ROLE_INITIATOR = "initiator"
ROLE_TARGET = "target"
SEND_TIMEOUT = 2.0
CLOSE_TIMEOUT = 5.0


def token_hash(token: str) -> bytes:
    """SHA-256 of a relay token (only that is kept)."""
    # Ours are ASCII; any other text from a client must just not match (never raise).
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@dataclass(eq=False)
class RelaySession:
    """One relay session: its parties, token hashes, sockets and counters."""

    session_id: str
    account_id: str
    initiator: str
    target: str
    token_hashes: dict[str, bytes]
    expires_at: float
    sockets: dict[str, web.WebSocketResponse] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)
    started_at: float | None = None
    last_activity: float = 0.0
    bytes: int = 0
    ended: str | None = None
    start: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    watcher: asyncio.Task[None] | None = None

    def role_of(self, device_id: str) -> str | None:
        """``initiator``, ``target`` or None for another device."""
        if device_id == self.initiator:
            return ROLE_INITIATOR
        if device_id == self.target:
            return ROLE_TARGET
        return None

    def other(self, role: str) -> str:
        """The other side's role."""
        return ROLE_TARGET if role == ROLE_INITIATOR else ROLE_INITIATOR

    @property
    def devices(self) -> tuple[str, str]:
        """(initiator, target)."""
        return (self.initiator, self.target)


MESSAGES = {
    "relay-idle-timeout": "the relay session was idle too long",
    "relay-time-quota": "the relay session reached its time limit",
    "relay-byte-quota": "the relay session reached its byte limit",
    "relay-frame-too-large": "a relay frame was too large",
    "relay-peer-closed": "the other side closed the relay session",
    "relay-peer-absent": "the other side did not join in time",
    "relay-closed": "the relay session was closed by a participant",
    "relay-send-stalled": "the other side stopped reading",
    "device-revoked": "a participant was revoked",
    "shutting-down": "the server is shutting down",
    "frame-malformed": "only binary frames are relayed",
}


async def pump(session: RelaySession, role: str, config: RelayConfig) -> str:
    """Forward this side's frames to the other side; the reason it stopped."""
    src = session.sockets[role]
    loop = asyncio.get_running_loop()
    while True:
        msg = await src.receive()
        if session.ended is not None:
            return session.ended
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            return "relay-peer-closed"
        if msg.type == WSMsgType.ERROR:
            return "relay-frame-too-large"
        if msg.type != WSMsgType.BINARY or not session.start.is_set():
            return "frame-malformed"
        data: bytes = msg.data
        session.bytes += len(data)
        if session.bytes > config.max_bytes:
            return "relay-byte-quota"
        session.last_activity = loop.time()
        if config.tap_dir is not None:
            tap(session, role, data, config.tap_dir)
        dst = session.sockets[session.other(role)]
        try:
            async with asyncio.timeout(config.idle_timeout):
                await dst.send_bytes(data)
        except TimeoutError:
            return "relay-send-stalled"
        except (ConnectionError, RuntimeError):
            return "relay-peer-closed"


async def watch(
    session: RelaySession, config: RelayConfig, end: Callable[[RelaySession, str], Awaitable[None]]
) -> None:
    """End (via ``end``) the session on token expiry (not both joined), idleness or its time quota."""
    loop = asyncio.get_running_loop()
    while session.ended is None:
        now = loop.time()
        if session.started_at is None:
            if now >= session.expires_at:
                await end(session, "relay-peer-absent")
                return
            # Until both joined; the idle and time limits count from then, and may be
            # shorter than the token's life.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.01, session.expires_at - now)):
                    await session.start.wait()
            continue
        idle_at = session.last_activity + config.idle_timeout
        quota_at = session.started_at + config.max_seconds
        if now >= quota_at:
            await end(session, "relay-time-quota")
            return
        if now >= idle_at:
            await end(session, "relay-idle-timeout")
            return
        wake = min(idle_at, quota_at)
        await asyncio.sleep(max(0.01, wake - now))


def tap(session: RelaySession, role: str, data: bytes, tap_dir: Path | None) -> None:
    """Tests only: append ``data`` to ``<tap_dir>/<session>-<role>.bin``."""
    if tap_dir is None:
        return
    # Tests only: a blocking append is acceptable there.
    with (tap_dir / f"{session.session_id}-{role}.bin").open("ab") as f:
        f.write(data)


async def send_json(ws: web.WebSocketResponse, message: dict[str, Any]) -> None:
    """Send one JSON message unless closed; a failed or slow send is dropped."""
    if ws.closed:
        return
    with contextlib.suppress(ConnectionError, TimeoutError, RuntimeError):
        async with asyncio.timeout(SEND_TIMEOUT):
            await ws.send_str(json.dumps(message, separators=(",", ":")))


async def send_end(ws: web.WebSocketResponse, code: str, message: str) -> None:
    """The fatal ``error`` frame that ends one side."""
    await send_json(
        ws, {"type": "error", "error": {"code": code, "message": message}, "fatal": True}
    )


async def close_ws(ws: web.WebSocketResponse, code: int, reason: str) -> None:
    """Close one side (aborted if it does not take the close frame in time)."""
    if ws.closed:
        return
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await ws.close(code=code, message=reason.encode("ascii")[:120])
    except (ConnectionError, TimeoutError, RuntimeError):
        # A peer that does not read cannot take our close frame: drop it.
        req = getattr(ws, "_req", None)
        transport = getattr(req, "transport", None) if req is not None else None
        if transport is not None:
            transport.abort()
