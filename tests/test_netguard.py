"""handoffd.netguard on real sockets: caps counted from accept, slots given back on close,
refusals reset at once, IPv6 counted by /64, bounded logs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from handoffd import netguard
from handoffd.errors import ConfigError

pytestmark = pytest.mark.timeout(60)


class Echo:
    """A guarded plain-TCP echo server on 127.0.0.1 (asyncio streams)."""

    def __init__(self, limits: netguard.AcceptLimits) -> None:
        self.guard = netguard.ConnectionGuard(limits, name="test")
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        (sock,) = netguard.bind("127.0.0.1", 0, self.guard)
        self.server = await asyncio.start_server(self._echo, sock=sock)
        self.port = int(sock.getsockname()[1])

    @staticmethod
    async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest_asyncio.fixture
async def echo() -> AsyncIterator[Echo]:
    server = Echo(netguard.AcceptLimits(max_connections=6, max_per_address=3))
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def _connect(
    port: int, source: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 10
    )


async def _served(port: int, source: str = "127.0.0.1") -> bool:
    """True if a fresh connection from ``source`` gets its bytes echoed; False if reset/closed."""
    try:
        reader, writer = await _connect(port, source)
    except ConnectionError:
        return False
    try:
        writer.write(b"ping")
        await writer.drain()
        return await asyncio.wait_for(reader.read(4), 10) == b"ping"
    except ConnectionError:
        return False
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _until(predicate: Callable[[], bool], within: float = 20) -> None:
    """Poll a counter of the guard (counters have no event to wait on)."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def _wait_total(guard: netguard.ConnectionGuard, n: int) -> None:
    await _until(lambda: guard.total == n)


@pytest.mark.asyncio
async def test_per_address_cap_from_accept_and_slots_come_back(echo: Echo) -> None:
    held = [await _connect(echo.port) for _ in range(3)]  # idle: counted from accept
    await _wait_total(echo.guard, 3)
    assert echo.guard.count(("127.0.0.1", 0)) == 3
    assert not await _served(echo.port)  # the 4th from this address is reset
    assert echo.guard.refused_per_address >= 1
    assert await _served(echo.port, source="127.0.0.2")  # another address is served
    held[0][1].close()
    await _wait_total(echo.guard, 3 - 1)  # 127.0.0.2's has gone too
    assert await _served(echo.port)
    for _, writer in held[1:]:
        writer.close()
    await _wait_total(echo.guard, 0)
    assert echo.guard.count(("127.0.0.1", 0)) == 0


@pytest.mark.asyncio
async def test_total_cap(echo: Echo) -> None:
    held = []
    for source in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
        held += [await _connect(echo.port, source) for _ in range(2)]
    await _wait_total(echo.guard, 6)
    assert not await _served(echo.port, source="127.0.0.4")
    assert echo.guard.refused_total >= 1
    held[0][1].close()
    await _wait_total(echo.guard, 5)
    assert await _served(echo.port, source="127.0.0.4")
    for _, writer in held[1:]:
        writer.close()


@pytest.mark.asyncio
async def test_a_burst_past_the_caps_is_reset_and_the_server_keeps_serving(echo: Echo) -> None:
    socks = []
    for _ in range(200):  # blocking connects: the kernel completes them before accept
        s = socket.socket()
        s.settimeout(0.0)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", echo.port))
        socks.append(s)
    try:
        await _until(lambda: echo.guard.refused_per_address >= 150)
        assert echo.guard.total <= 3
        assert await _served(echo.port, source="127.0.0.2")
    finally:
        for s in socks:
            s.close()
    await _wait_total(echo.guard, 0)


def test_address_keys() -> None:
    assert netguard.address_key(("192.0.2.7", 1)) == "192.0.2.7"
    assert netguard.address_key(("::ffff:192.0.2.7", 1, 0, 0)) == "192.0.2.7"
    a = netguard.address_key(("2001:db8:1:2:aaaa::1", 1, 0, 0))
    b = netguard.address_key(("2001:db8:1:2:bbbb::9", 1, 0, 0))
    assert a == b == "2001:db8:1:2::/64"
    assert netguard.address_key(("2001:db8:1:3::1", 1, 0, 0)) != a
    assert netguard.address_key(("fe80::1%eth0", 1, 0, 2)) == "fe80::/64"
    assert netguard.address_key("/run/x.sock") == ""
    assert netguard.address_key(("not-an-ip", 1)) == ""


@pytest.mark.asyncio
async def test_ipv6_counted_by_slash_64() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")  # pragma: no cover
    guard = netguard.ConnectionGuard(
        netguard.AcceptLimits(max_connections=10, max_per_address=2), name="v6"
    )
    try:
        (sock,) = netguard.bind("::1", 0, guard)
    except OSError:
        pytest.skip("no IPv6 loopback")  # pragma: no cover
    server = await asyncio.start_server(Echo._echo, sock=sock)
    port = sock.getsockname()[1]
    try:
        held = [await asyncio.open_connection("::1", port) for _ in range(2)]
        await _wait_total(guard, 2)
        assert guard.count(("::1", 0, 0, 0)) == 2
        with contextlib.suppress(ConnectionError):  # reset at accept: may fail the connect
            _, w = await asyncio.open_connection("::1", port)
            w.close()
        await _until(lambda: guard.refused_per_address >= 1)
        for _, writer in held:
            writer.close()
        await _wait_total(guard, 0)
    finally:
        server.close()
        await server.wait_closed()


def test_limits_are_checked() -> None:
    with pytest.raises(ConfigError):
        netguard.AcceptLimits(max_connections=0)
    with pytest.raises(ConfigError):
        netguard.AcceptLimits(max_connections=1, max_per_address=-1)
    with pytest.raises(ConfigError):
        netguard.AcceptLimits(max_connections=1, handshake_timeout=0)


def test_rate_limited_log(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limited = netguard.RateLimitedLog(logging.getLogger("t"), interval=10, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="t"):
        assert limited(logging.INFO, "thing happened x=%d", 1)
        for i in range(1000):
            assert not limited(logging.INFO, "thing happened x=%d", i)
        now[0] = 10.0
        assert limited(logging.INFO, "thing happened x=%d", 2)
        assert limited(logging.INFO, "other thing")
    assert [r.getMessage() for r in caplog.records] == [
        "thing happened x=1 suppressed=0",
        "thing happened x=2 suppressed=1000",
        "other thing suppressed=0",
    ]


def test_asyncio_accept_records_are_filtered(caplog: pytest.LogCaptureFixture) -> None:
    netguard.install_asyncio_accept_log_filter()
    netguard.install_asyncio_accept_log_filter()  # idempotent
    with caplog.at_level(logging.INFO):
        for _ in range(500):
            logging.getLogger("asyncio").error(
                "socket.accept() out of system resource\nsocket: x", exc_info=OSError(24, "x")
            )
        logging.getLogger("asyncio").error("something else")
    asyncio_records = [r for r in caplog.records if r.name == "asyncio"]
    assert [r.getMessage() for r in asyncio_records] == ["something else"]
    assert len([r for r in caplog.records if r.name == "handoffd.netguard"]) <= 1


def test_raise_nofile_limit() -> None:
    import resource

    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        soft, hard = netguard.raise_nofile_limit()
        assert (soft, hard) == resource.getrlimit(resource.RLIMIT_NOFILE)
        assert soft >= before[0]
        assert hard == before[1]
        if hard != resource.RLIM_INFINITY:
            assert soft == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)
