"""The LAN signaling listener under a flood from LAN neighbours (real TLS, real sockets):
unfinished handshakes and idle TLS connections from other addresses do not make a real offer
``busy``, and the listener's descriptors stay bounded."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl

import pytest

from handoffd.transport import signaling
from handoffd.transport.signaling import SignalingServer, client_context, send_offer
from tests.transport.helpers import Account

# More than the default 60 s: floods of real TLS connections wait out the listener's handshake and idle timeouts.
pytestmark = pytest.mark.timeout(120)

ACCOUNT = Account()
CALLEE, CALLER = ACCOUNT.device(), ACCOUNT.device()


async def _offer(port: int, data: bytes) -> bytes:
    """A real caller's offer (hello, proof, offer) from CALLER to CALLEE on ``port``."""
    return await send_offer(
        "127.0.0.1", port, data, local=CALLER.local, peer_device_id=CALLEE.id, timeout=20
    )


async def _answer(offer: bytes) -> bytes:
    return b"answer:" + offer


async def _idle_tls(port: int, source: str) -> asyncio.StreamWriter | None:
    """A TLS connection from ``source`` that then sends nothing (None if refused)."""
    try:
        async with asyncio.timeout(10):
            _, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context(), server_hostname="", local_addr=(source, 0)
            )
    except (ConnectionError, ssl.SSLError, TimeoutError):
        return None
    return writer


def _half_open(port: int, source: str, n: int) -> list[socket.socket]:
    """``n`` TCP connections from ``source`` that never start TLS."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind((source, 0))
        s.settimeout(0.0)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        socks.append(s)
    return socks


@pytest.mark.asyncio
async def test_a_neighbour_holding_many_connections_does_not_starve_real_offers() -> None:
    server = SignalingServer("127.0.0.1", 0, _answer, local=lambda: CALLEE.local)
    await server.start()
    port = server.port
    idle: list[asyncio.StreamWriter] = []
    half: list[socket.socket] = []
    try:
        # 40 idle TLS connections from one neighbour (before: 32 handler slots, so every real
        # offer got "busy"), and 1,000 unfinished handshakes from another (before: one
        # descriptor each for up to 10 s).
        for _ in range(40):
            writer = await _idle_tls(port, "127.0.0.2")
            if writer is not None:
                idle.append(writer)
        half = await asyncio.to_thread(_half_open, port, "127.0.0.3", 1000)
        guard = server.guard
        async with asyncio.timeout(30):
            while guard.refused_per_address < 500:  # noqa: ASYNC110 - a counter, no event
                await asyncio.sleep(0.05)
        assert guard.count(("127.0.0.2", 0)) <= signaling.MAX_PER_ADDRESS
        assert guard.count(("127.0.0.3", 0)) <= signaling.MAX_PER_ADDRESS
        assert guard.total <= signaling.MAX_OPEN
        # A real caller from its own address is answered, not "busy".
        for i in range(5):
            offer = b"offer-%d" % i
            assert await _offer(port, offer) == b"answer:" + offer
    finally:
        for s in half:
            s.close()
        for writer in idle:
            writer.close()
        await server.close()


@pytest.mark.asyncio
async def test_the_handshake_and_the_offer_are_timed_out() -> None:
    server = SignalingServer(
        "127.0.0.1",
        0,
        _answer,
        local=lambda: CALLEE.local,
        read_timeout=0.5,
        handshake_timeout=0.5,
        max_per_address=2,
    )
    await server.start()
    try:
        # Two silent connections fill this address's share; both are dropped in time, then
        # the address is served again.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)  # no TLS
        tls = await _idle_tls(server.port, "127.0.0.1")
        assert tls is not None
        async with asyncio.timeout(20):
            assert await reader.read() == b""
            while server.guard.total:  # noqa: ASYNC110 - a counter, no event
                await asyncio.sleep(0.02)
        writer.close()
        tls.close()
        assert await _offer(server.port, b"x") == b"answer:x"
    finally:
        await server.close()
