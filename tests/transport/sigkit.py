"""Helpers for the LAN signaling tests: one account's caller and callee, a handler that
answers or misbehaves on request, raw TLS connections to the port."""

from __future__ import annotations

import asyncio

from handoffd.transport.base import LocalIdentity, PeerAuthError
from handoffd.transport.signaling import MAX_FRAME, client_context, read_frame, send_offer
from tests.transport.helpers import Account

ACCOUNT = Account()
CALLEE, CALLER = ACCOUNT.device(), ACCOUNT.device()


def me() -> LocalIdentity:
    """The listener's identity in these tests."""
    return CALLEE.local


async def offer(port: int, data: bytes, *, timeout: float) -> bytes:  # noqa: ASYNC109
    """``send_offer`` from CALLER to CALLEE on ``port``."""
    return await send_offer(
        "127.0.0.1", port, data, local=CALLER.local, peer_device_id=CALLEE.id, timeout=timeout
    )


class Handler:
    """An on_offer that answers ``answer:<offer>`` or misbehaves on request."""

    def __init__(self) -> None:
        self.calls = 0
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, offer: bytes) -> bytes:
        self.calls += 1
        self.entered.set()
        if offer == b"huge":
            return b"x" * MAX_FRAME
        if len(offer) > 1000:
            return b"big:%d" % len(offer)
        if offer == b"refuse":
            raise PeerAuthError("no", code="cert-revoked")
        if offer == b"crash":
            raise RuntimeError("bug")
        if offer == b"hang":
            await self.release.wait()
        return b"answer:" + offer


async def tls_connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection to the signaling port, frames left to the caller."""
    return await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_context(), server_hostname=""
    )


async def raw(port: int, data: bytes) -> tuple[int, bytes] | None:
    """Send raw bytes inside TLS; return the reply frame, or None if the server closed without one."""
    reader, writer = await tls_connect(port)
    try:
        writer.write(data)
        await writer.drain()
        try:
            return await asyncio.wait_for(read_frame(reader), 10)
        except asyncio.IncompleteReadError:
            return None
    finally:
        writer.close()
        await writer.wait_closed()


async def still_serving(port: int) -> None:
    assert await offer(port, b"ping", timeout=10) == b"answer:ping"
