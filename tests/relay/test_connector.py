"""The connector racing a direct dialer (real WebRTC or a stand-in) against the real relay."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from handoffd.errors import TransportError
from handoffd.transport import webrtc
from handoffd.transport.base import Channel, Dialer, PeerAuthError
from handoffd.transport.connector import Connector, NoPathError, Upgrader
from handoffd.transport.dialdoubt import doubt
from handoffd.transport.signaling import send_offer
from tests.relay.helpers import Node, Paired, pair_devices, start_server, wait_stats
from tests.support.processes import ServerProcess
from tests.transport.helpers import Callee, Device

# More than the default 60 s: real WebRTC raced against the real relay, some cases waiting out a dialer.
pytestmark = pytest.mark.timeout(120)

LOOPBACK = webrtc.WebRtcOptions(host_addresses=("127.0.0.1",))


@dataclass(frozen=True)
class World:
    server: ServerProcess
    a: Paired
    b: Paired
    c: Paired  # never online


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    server = start_server(tmp_path_factory.mktemp("connector"))
    try:
        a, b, c = pair_devices(server, "dave", 3)
        yield World(server, a, b, c)
    finally:
        server.stop()


def deadline(seconds: float = 20.0) -> float:
    return asyncio.get_running_loop().time() + seconds


class StandIn(Dialer):
    """A direct dialer stand-in: fails at once, never plausible, or hangs; counts its dials."""

    name = "stand-in"

    def __init__(self, behaviour: str, error: TransportError | None = None) -> None:
        self.behaviour = behaviour
        self.error = error or TransportError("no ICE candidate pair works", code="ice-failed")
        self.dials = 0
        self.cancelled = asyncio.Event()

    def plausible(self, peer_device_id: str) -> bool:
        return self.behaviour != "implausible"

    async def dial(self, peer_device_id: str, *, deadline: float) -> Channel:
        self.dials += 1
        if self.behaviour == "doubt":
            doubt()  # then hangs like "hang"
        if self.behaviour in ("hang", "doubt"):
            try:
                await asyncio.Event().wait()
            finally:
                self.cancelled.set()
        raise self.error


class Hanging:
    """WebRTC signaling to a peer that never answers (the offer goes nowhere)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def __call__(self, peer: str, offer: bytes, deadline: float) -> bytes:
        self.started.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.cancelled.set()
        raise AssertionError("unreachable")


class Delayed(Dialer):
    """Another dialer, started late (a slow direct path)."""

    def __init__(self, inner: Dialer, delay: float) -> None:
        self.inner, self.delay, self.name = inner, delay, inner.name

    async def dial(self, peer_device_id: str, *, deadline: float) -> Channel:
        await asyncio.sleep(self.delay)
        return await self.inner.dial(peer_device_id, deadline=deadline)


@pytest_asyncio.fixture
async def callee(world: World) -> AsyncIterator[Callee]:
    """Device b answering WebRTC offers on a real LAN signaling server."""
    node = Node(world.server, world.b)
    device = Device(key=world.b.key, cert=world.b.result.device_cert, local=node.local)
    async with Callee(device, options=LOOPBACK) as c:
        yield c


def webrtc_to(callee: Callee, local: Node) -> webrtc.WebRtcDialer:
    async def signal(peer: str, offer: bytes, deadline: float) -> bytes:
        left = max(0.1, deadline - asyncio.get_running_loop().time())
        return await send_offer(
            "127.0.0.1",
            callee.server.port,
            offer,
            local=local.local,
            peer_device_id=callee.device.id,
            timeout=left,
        )

    return webrtc.WebRtcDialer(local.local, signal, LOOPBACK)


def tasks_now() -> set[asyncio.Task[object]]:
    return set(asyncio.all_tasks())


async def settled(baseline: set[asyncio.Task[object]]) -> set[asyncio.Task[object]]:
    """Tasks that exist now and not in ``baseline`` (after letting finished ones go)."""
    for _ in range(20):
        extra = {t for t in asyncio.all_tasks() - baseline if not t.done()}
        extra.discard(asyncio.current_task())
        if not extra:
            return extra
        await asyncio.sleep(0.05)
    return extra


async def exchange(channel: Channel, nb: Node | Callee) -> None:
    peer = await asyncio.wait_for(nb.channels.get(), 10)
    await channel.send(b"ping")
    assert await peer.recv() == b"ping"


# ---------------------------------------------------------------- who wins


@pytest.mark.asyncio
async def test_direct_fails_fast_relay_starts_at_once_and_wins(world: World) -> None:
    async with Node(world.server, world.a) as na, Node(world.server, world.b) as nb:
        await na.wait_online(nb.id)
        direct = StandIn("fail")
        connector = Connector([direct, na.dialer()], head_start=60.0)  # no waiting for it
        channel = await connector.connect(nb.id, deadline=deadline())
        try:
            assert channel.path == "relay"
            assert direct.dials == 1
            await exchange(channel, nb)
        finally:
            await channel.close()


@pytest.mark.asyncio
async def test_direct_doubting_its_path_starts_the_relay_at_once_and_keeps_trying(
    world: World,
) -> None:
    async with Node(world.server, world.a) as na, Node(world.server, world.b) as nb:
        await na.wait_online(nb.id)
        direct = StandIn("doubt")
        # Without the doubt the relay would wait out a head start far beyond the deadline.
        connector = Connector([direct, na.dialer()], head_start=600.0)
        channel = await connector.connect(nb.id, deadline=deadline())
        try:
            assert channel.path == "relay"
            assert direct.dials == 1
            assert direct.cancelled.is_set()  # it was still trying when the relay won
            await exchange(channel, nb)
        finally:
            await channel.close()


def test_doubt_outside_a_race_does_nothing() -> None:
    doubt()


@pytest.mark.asyncio
async def test_implausible_direct_is_skipped(world: World) -> None:
    async with Node(world.server, world.a) as na, Node(world.server, world.b) as nb:
        await na.wait_online(nb.id)
        direct = StandIn("implausible")
        channel = await Connector([direct, na.dialer()], head_start=60.0).connect(
            nb.id, deadline=deadline()
        )
        try:
            assert channel.path == "relay"
            assert direct.dials == 0
        finally:
            await channel.close()


@pytest.mark.asyncio
async def test_webrtc_peer_never_answers_relay_wins(world: World) -> None:
    async with Node(world.server, world.a) as na, Node(world.server, world.b) as nb:
        await na.wait_online(nb.id)
        baseline = tasks_now()
        hanging = Hanging()
        direct = webrtc.WebRtcDialer(na.local, hanging, LOOPBACK)
        channel = await Connector([direct, na.dialer()], head_start=0.5).connect(
            nb.id, deadline=deadline()
        )
        try:
            assert channel.path == "relay"
            assert hanging.started.is_set()
            assert hanging.cancelled.is_set()  # the direct attempt was cancelled, not left running
            await exchange(channel, nb)
        finally:
            await channel.close()
        leftovers = await settled(baseline)
        assert not {t for t in leftovers if t.get_name().startswith(("dial-", "relay-reader"))}


@pytest.mark.asyncio
async def test_both_possible_direct_wins_relay_never_opened(world: World, callee: Callee) -> None:
    async with Node(world.server, world.a) as na, Node(world.server, world.b) as nb:
        await na.wait_online(nb.id)
        opened = (await na.client.relays())["opened"]
        # A generous head start: WebRTC setup on a loaded 2-core machine can exceed 1.75 s.
        connector = Connector([webrtc_to(callee, na), na.dialer()], head_start=15.0)
        channel = await connector.connect(nb.id, deadline=deadline())
        try:
            assert channel.path == "direct"
            assert channel.peer.device_id == nb.id
            await exchange(channel, callee)
        finally:
            await channel.close()
        assert await na.client.relays() == {"pending": 0, "active": 0, "opened": opened}
        assert not nb.offers


@pytest.mark.asyncio
async def test_direct_wins_while_relay_in_flight_relay_closed(world: World, callee: Callee) -> None:
    async with (
        Node(world.server, world.a) as na,
        Node(world.server, world.b, accept=False) as nb,
    ):
        await na.wait_online(nb.id)
        opened = (await na.client.relays())["opened"]
        slow_direct = Delayed(webrtc_to(callee, na), 1.0)
        connector = Connector([slow_direct, na.dialer()], head_start=0.2)
        channel = await connector.connect(nb.id, deadline=deadline())
        try:
            assert channel.path == "direct"
            assert len(nb.offers) == 1  # the relay attempt really was under way
            await exchange(channel, callee)
        finally:
            await channel.close()
        # The server sees no lingering relay session.
        stats = await wait_stats(na.client, pending=0, active=0)
        assert stats["opened"] == opened + 1


@pytest.mark.asyncio
async def test_cancelled_mid_race_leaves_nothing_running(world: World) -> None:
    async with (
        Node(world.server, world.a) as na,
        Node(world.server, world.b, accept=False) as nb,
    ):
        await na.wait_online(nb.id)
        baseline = tasks_now()
        hanging = Hanging()
        direct = webrtc.WebRtcDialer(na.local, hanging, LOOPBACK)
        connector = Connector([direct, na.dialer()], head_start=0.1)
        race = asyncio.create_task(connector.connect(nb.id, deadline=deadline()))
        await nb.wait_offer()  # both attempts are in flight
        await wait_stats(na.client, pending=1)
        race.cancel()
        with pytest.raises(asyncio.CancelledError):
            await race
        assert hanging.cancelled.is_set()
        await wait_stats(na.client, pending=0, active=0)
        leftovers = await settled(baseline)
        assert not leftovers, leftovers


# ---------------------------------------------------------------- failures


@pytest.mark.asyncio
async def test_no_path_lists_every_attempt(world: World) -> None:
    async with Node(world.server, world.a) as na:
        direct = StandIn("fail")
        with pytest.raises(NoPathError) as failed:
            await Connector([direct, na.dialer()], head_start=60.0).connect(
                world.c.id, deadline=deadline()
            )
        assert failed.value.code == "no-path"
        # c is not online: the relay dialer says so without asking the server.
        assert [(n, e.code) for n, e in failed.value.attempts] == [
            ("stand-in", "ice-failed"),
            ("relay", "no-route"),
        ]


@pytest.mark.asyncio
async def test_peer_auth_error_wins_over_other_failures() -> None:
    auth = StandIn("fail", PeerAuthError("revoked", code="cert-revoked"))
    other = StandIn("fail")
    with pytest.raises(PeerAuthError) as failed:
        await Connector([other, auth], head_start=60.0).connect("A" * 32, deadline=deadline())
    assert failed.value.code == "cert-revoked"


@pytest.mark.asyncio
async def test_deadline_gives_connect_timeout() -> None:
    hang = StandIn("hang")
    with pytest.raises(NoPathError) as failed:
        await Connector([hang], head_start=0.1).connect("A" * 32, deadline=deadline(0.3))
    assert failed.value.code == "connect-timeout"
    assert hang.cancelled.is_set()


# ---------------------------------------------------------------- upgrade


class Switch(Dialer):
    """A direct dialer that fails until switched on."""

    name = "switch"

    def __init__(self, make: Callable[[], Awaitable[Channel]] | None = None) -> None:
        self.make = make

    async def dial(self, peer_device_id: str, *, deadline: float) -> Channel:
        if self.make is None:
            raise TransportError("no direct path yet", code="ice-failed")
        return await self.make()


@pytest.mark.asyncio
async def test_upgrade_from_relay_to_direct(world: World, callee: Callee) -> None:
    async with Node(world.server, world.a) as na, Node(world.server, world.b) as nb:
        await na.wait_online(nb.id)
        direct = Switch()
        connector = Connector([direct, na.dialer()], head_start=60.0)
        relayed = await connector.connect(nb.id, deadline=deadline())
        try:
            assert relayed.path == "relay"
            assert await connector.upgrade(relayed, deadline=deadline(5)) is None  # still none
            rtc = webrtc_to(callee, na)
            direct.make = lambda: rtc.dial(nb.id, deadline=deadline())
            upgrader = Upgrader(connector, relayed, first_delay=0.05, interval=0.05)
            await asyncio.wait_for(upgrader.run(), 30)
            better = upgrader.take()
            assert better is not None
            assert upgrader.take() is None  # handed over once
            try:
                assert better.path == "direct"
                assert better.peer.device_id == nb.id
                await exchange(better, callee)
                # Already direct: nothing better to find.
                assert await connector.upgrade(better, deadline=deadline(5)) is None
            finally:
                await better.close()
            await upgrader.close()
        finally:
            await relayed.close()


# ---------------------------------------------------------------- adaptive head start


class Ready(Channel):
    """A channel stand-in (no I/O) for pure connector tests."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._closed = False

    async def send(self, data: bytes) -> None:
        raise AssertionError("not used")

    async def recv(self) -> bytes:
        raise AssertionError("not used")

    async def close(self) -> None:
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed


class Toggle(Dialer):
    """Hangs, fails, or hands out a channel, as the test says."""

    def __init__(self, name: str, behaviour: str) -> None:
        self.name, self.behaviour = name, behaviour

    async def dial(self, peer_device_id: str, *, deadline: float) -> Channel:
        if self.behaviour == "hang":
            await asyncio.Event().wait()
        if self.behaviour == "fail":
            raise TransportError("no ICE candidate pair works", code="ice-failed")
        return Ready(self.name)


@pytest.mark.asyncio
async def test_a_lost_race_shortens_the_head_start_for_that_peer_only() -> None:
    direct, relay = Toggle("direct", "fail"), Toggle("relay", "ok")
    conn = Connector([direct, relay], head_start=60.0, lost_head_start=0.05)
    peer, other = "A" * 32, "B" * 32
    # Direct fails at once: the relay starts at once and wins; the connector remembers.
    assert (await conn.connect(peer, deadline=deadline(5))).path == "relay"
    # Now direct hangs: with the full 60 s head start the relay could not start before the
    # deadline; for this peer it starts after the short one and wins.
    direct.behaviour = "hang"
    assert (await conn.connect(peer, deadline=deadline(5))).path == "relay"
    # Another peer still gets the full head start: nothing but the hanging direct attempt.
    with pytest.raises(NoPathError) as timed_out:
        await conn.connect(other, deadline=deadline(0.5))
    assert timed_out.value.code == "connect-timeout"
    # Direct wins again: the peer is forgotten and the full head start is back.
    direct.behaviour = "ok"
    assert (await conn.connect(peer, deadline=deadline(5))).path == "direct"
    direct.behaviour = "hang"
    with pytest.raises(NoPathError) as back:
        await conn.connect(peer, deadline=deadline(0.5))
    assert back.value.code == "connect-timeout"
