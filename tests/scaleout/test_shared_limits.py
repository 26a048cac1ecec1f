"""Rate limits, the relay per-account cap and relay-close across two instances (real processes)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
import redis.utils

from handoffd import identity
from handoffd.errors import ServerError
from handoffd.server.ratelimitredis import SharedRateLimiter
from handoffd.serverlink import RelayTicket, ServerClient, ServerLink, parse_invite
from tests.scaleout.conftest import Cluster, make_cluster, stop_cluster
from tests.scaleout.test_cluster import Recorder, _pair
from tests.services import PostgresServer, RedisServer

pytestmark = pytest.mark.asyncio

CAP = 2
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


@pytest.fixture(scope="module")
def limited(
    tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer, redis_server: RedisServer
) -> Iterator[Cluster]:
    """Two instances with the default join-failure limit (10 a minute, burst 10), relay cap 2."""
    c = make_cluster(
        tmp_path_factory.mktemp("limited"),
        postgres,
        redis_server,
        2,
        limits=("--relay-max-per-account", str(CAP)),
    )
    try:
        yield c
    finally:
        stop_cluster(c)


async def _links(
    cluster: Cluster, account: str
) -> tuple[list[ServerClient], list[ServerLink], list[str], list[RelayTicket]]:
    """Device 0 on instance A, device 1 on instance B (direct), both online; offers to device 1."""
    k0, r0 = await _pair(cluster, account, "on-a")
    k1, r1 = await _pair(cluster, account, "on-b")
    clients = [cluster.direct(0, k0, r0), cluster.direct(1, k1, r1)]
    offers: list[RelayTicket] = []
    recs = [Recorder(), Recorder()]
    links = [
        clients[i].connect(
            recs[i].on_presence,
            recs[i].on_signal,
            on_error=recs[i].on_error,
            on_relay=offers.append if i == 1 else None,
        )
        for i in range(2)
    ]
    for link in links:
        await link.start()
    async with asyncio.timeout(20):
        for link in links:
            await link.wait_connected()
    await recs[0].until(lambda: r1.device_id in links[0].online)
    await recs[1].until(lambda: r0.device_id in links[1].online)
    return clients, links, [r0.device_id, r1.device_id], offers


async def _close_all(clients: list[ServerClient], links: list[ServerLink]) -> None:
    for link in links:
        await link.close()
    for client in clients:
        await client.close()


async def test_relay_cap_holds_across_instances(limited: Cluster) -> None:
    clients, links, ids, _ = await _links(limited, "capped")
    try:
        held_by_a = [await links[0].open_relay(ids[1]) for _ in range(CAP)]
        with pytest.raises(ServerError) as refused:  # held by B, same account: over the cap
            await links[1].open_relay(ids[0])
        assert refused.value.code == "relay-too-many"
        await links[0].close_relay(held_by_a[0].session)  # one ends: B may open one again

        async def opened_on_b() -> RelayTicket:
            while True:  # the close reaches Redis right after the socket write
                try:
                    return await links[1].open_relay(ids[0])
                except ServerError as exc:
                    if exc.code != "relay-too-many":
                        raise
                await asyncio.sleep(0.2)

        async with asyncio.timeout(20):
            await opened_on_b()
    finally:
        await _close_all(clients, links)


async def test_relay_close_through_the_other_instance_ends_the_session(limited: Cluster) -> None:
    clients, links, ids, offers = await _links(limited, "closer")
    joiner = clients[0]
    try:
        ticket = await links[0].open_relay(ids[1])  # held by A
        async with asyncio.timeout(20):
            while not offers:  # noqa: ASYNC110 - the offer callback sets no event
                await asyncio.sleep(0.05)
        await links[1].close_relay(offers[0].session)  # the target declines, through B
        # The opener joins on A: refused with the reason if the close got there first, else
        # ended with it while waiting for the target (without it: waiting for the 30 s token).
        with pytest.raises(ServerError) as ended:
            async with asyncio.timeout(15):
                await joiner.relay_stream(ticket)
        assert ended.value.code == "relay-closed"
    finally:
        await _close_all(clients, links)


async def test_shared_bucket_takes_refunds_and_forgets_only_full_buckets(
    redis_server: RedisServer,
) -> None:
    """The Redis bucket (real Redis): burst, refund, TTL only below full, nothing for a refund."""
    await asyncio.to_thread(redis.utils.get_lib_version)  # cached; it reads package metadata
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        limiter = SharedRateLimiter(client, "unit", per_minute=1, burst=2)
        assert [await limiter.acquire("k", 0.0) for _ in range(3)][:2] == [0, 0]
        assert await limiter.acquire("k", 0.0) >= 1  # empty: seconds to wait, nothing taken
        ttl = await client.pttl("hp:rl:unit:k")
        assert 60_000 < ttl <= 121_000  # kept until it would be full again (2 tokens at 1/min)
        await limiter.give_back("k", 0.0)
        assert await limiter.acquire("k", 0.0) == 0  # the refunded token
        await limiter.give_back("absent", 0.0)  # a full bucket gets nothing more
        assert await client.exists("hp:rl:unit:absent") == 0
        assert await limiter.acquire("n", 0.0) == 0
        await limiter.give_back("n", 0.0)  # full again: the same as absent, forgotten
        assert await client.exists("hp:rl:unit:n") == 0
    finally:
        await client.aclose()


async def test_wrong_codes_over_two_instances_evaluated_at_most_the_burst(
    limited: Cluster,
) -> None:
    """Next to last in this module: it empties 127.0.0.1's join bucket for a minute."""

    async def guess(index: int) -> str:
        code = "".join(secrets.choice(CROCKFORD) for _ in range(12))
        async with ServerClient(limited.instances[index].url, fingerprint=None) as c:
            invite = parse_invite(code, server_url=c.server_url)
            try:
                await c.join(invite, key=identity.generate_device_key(), name="x", platform="l")
            except ServerError as exc:
                return exc.code
        return "joined"

    codes = await asyncio.gather(*(guess(i % 2) for i in range(40)))
    evaluated = [c for c in codes if c != "rate-limited"]
    assert all(c.startswith("invite-") for c in evaluated), codes
    assert 1 <= len(evaluated) <= 10, codes  # the burst, for both instances together


async def test_limits_fail_closed_while_redis_is_down(
    limited: Cluster, redis_server: RedisServer
) -> None:
    """Redis stopped: a join is refused 503 ``bus-unavailable``, never let through unlimited."""
    redis_server.stop()
    try:
        for index in range(2):
            async with ServerClient(limited.instances[index].url, fingerprint=None) as c:
                invite = parse_invite("0" * 12, server_url=c.server_url)
                with pytest.raises(ServerError) as refused:
                    await c.join(invite, key=identity.generate_device_key(), name="x", platform="l")
                assert refused.value.code == "bus-unavailable"
    finally:
        redis_server.start()
