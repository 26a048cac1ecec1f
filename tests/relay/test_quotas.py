"""Relay limits enforced by a real server started with small values (HANDOFF_RELAY_*)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from handoffd.errors import ServerError, TransportError
from handoffd.transport.base import Channel
from tests.relay.helpers import Node, Paired, drain, pair_devices, start_server, wait_stats
from tests.support.processes import ServerProcess

# More than the default 60 s: relay limits are reached by real transfers.
pytestmark = pytest.mark.timeout(120)

MAX_BYTES = 1024 * 1024
MAX_FRAME = 100 * 1024


@dataclass(frozen=True)
class Tight:
    server: ServerProcess
    devices: list[Paired]


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tight]:
    base = tmp_path_factory.mktemp("relay-quotas")
    server = start_server(
        base,
        {
            "idle_timeout": "2.0",
            "max_seconds": "5.0",
            "max_bytes": str(MAX_BYTES),
            "max_per_account": "2",
            "token_ttl": "3.0",
            "opens_per_minute": "1",
            "open_burst": "4",
            "max_frame": str(MAX_FRAME),
        },
    )
    try:
        yield Tight(server, pair_devices(server, "carol", 7))
    finally:
        server.stop()


def deadline(seconds: float = 15.0) -> float:
    return asyncio.get_running_loop().time() + seconds


async def dial(src: Node, dst: Node) -> tuple[Channel, Channel]:
    await src.wait_online(dst.id)
    channel = await src.dialer().dial(dst.id, deadline=deadline())
    return channel, await asyncio.wait_for(dst.channels.get(), 10)


async def ended(channel: Channel) -> TransportError:
    """Read until the channel fails; the error."""
    async with asyncio.timeout(20):
        try:
            while True:
                await channel.recv()
        except TransportError as exc:
            return exc


@pytest.mark.asyncio
async def test_idle_session_is_closed(tight: Tight) -> None:
    async with (
        Node(tight.server, tight.devices[0]) as na,
        Node(tight.server, tight.devices[1]) as nb,
    ):
        channel, peer = await dial(na, nb)
        try:
            await channel.send(b"one message, then silence")
            assert await peer.recv() == b"one message, then silence"
            for side in (channel, peer):
                assert (await ended(side)).code == "relay-idle-timeout"
        finally:
            await channel.close()
        await wait_stats(na.client, active=0, pending=0)


@pytest.mark.asyncio
async def test_byte_quota(tight: Tight) -> None:
    async with (
        Node(tight.server, tight.devices[0]) as na,
        Node(tight.server, tight.devices[1]) as nb,
    ):
        channel, peer = await dial(na, nb)
        try:

            async def flood() -> None:
                # Some of it may still fit in socket buffers after the server gave up.
                with contextlib.suppress(TransportError):
                    for _ in range(64):  # 4 MiB, four times the quota
                        await channel.send(b"q" * 65536)

            sender = asyncio.create_task(flood())
            got, end = await drain(peer)
            received = sum(len(m) for m in got)
            assert end.code == "relay-byte-quota"
            await sender
            assert (await ended(channel)).code == "relay-byte-quota"
        finally:
            await channel.close()
        assert 0 < received <= MAX_BYTES
        await wait_stats(na.client, active=0, pending=0)


@pytest.mark.asyncio
async def test_time_quota(tight: Tight) -> None:
    async with (
        Node(tight.server, tight.devices[0]) as na,
        Node(tight.server, tight.devices[1]) as nb,
    ):
        channel, peer = await dial(na, nb)
        try:

            async def trickle() -> TransportError:
                while True:  # never idle: only the time quota can end it
                    try:
                        await channel.send(b"tick")
                    except TransportError as exc:
                        return exc
                    await asyncio.sleep(0.2)

            sender = asyncio.create_task(trickle())
            assert (await ended(peer)).code == "relay-time-quota"
            assert isinstance(await asyncio.wait_for(sender, 10), TransportError)
        finally:
            await channel.close()


@pytest.mark.asyncio
async def test_frame_bound(tight: Tight) -> None:
    async with (
        Node(tight.server, tight.devices[2]) as na,
        Node(tight.server, tight.devices[3], accept=False) as nb,
    ):
        await na.wait_online(nb.id)
        ticket = await na.link.open_relay(nb.id)
        await nb.wait_offer()
        joining = asyncio.create_task(na.client.relay_stream(ticket, deadline=deadline()))
        other = await nb.client.relay_stream(nb.offers[0], deadline=deadline())
        stream = await joining
        try:
            await stream.send(b"f" * (MAX_FRAME + 1))
            assert await other.recv() is None
            assert other.error is not None
            assert other.error.code == "relay-frame-too-large"
        finally:
            await stream.close()
            await other.close()
        await wait_stats(na.client, active=0, pending=0)


@pytest.mark.asyncio
async def test_concurrent_cap_and_rate_limit(tight: Tight) -> None:
    d = tight.devices
    async with (
        Node(tight.server, d[4]) as na,
        Node(tight.server, d[5]) as nb,
        Node(tight.server, d[6], accept=False) as nc,
    ):
        first = await dial(na, nb)
        second = await dial(na, nb)
        try:
            with pytest.raises(TransportError) as cap:
                await na.dialer().dial(nb.id, deadline=deadline())
            assert cap.value.code == "relay-too-many"
        finally:
            for channel in first:
                await channel.close()
        # A slot is free again; the rate limit (burst 4: 2 dials, 1 refused, this one) still allows it.
        await wait_stats(na.client, active=1)
        third = await dial(na, nb)
        for channel in (*second, *third):
            await channel.close()
        with pytest.raises(ServerError) as limited:
            await na.link.open_relay(nc.id)
        assert limited.value.code == "rate-limited"
        await wait_stats(na.client, active=0, pending=0)


@pytest.mark.asyncio
async def test_unjoined_session_expires(tight: Tight) -> None:
    async with (
        Node(tight.server, tight.devices[2]) as na,
        Node(tight.server, tight.devices[3], accept=False) as nb,
    ):
        await na.wait_online(nb.id)
        with pytest.raises(TransportError) as absent:
            await na.dialer().dial(nb.id, deadline=deadline(20))
        assert absent.value.code == "relay-peer-absent"
        assert len(nb.offers) == 1
        with pytest.raises(ServerError) as late:
            await nb.client.relay_stream(nb.offers[0], deadline=deadline())
        assert late.value.code == "relay-unknown"
        await wait_stats(na.client, active=0, pending=0)
