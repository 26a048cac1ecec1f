"""Faults of a deployment of two instances: Redis restarted, PostgreSQL stopped and started.

The cluster here has its own PostgreSQL and Redis (they are stopped and started).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest
import redis

from handoffd.errors import ServerError
from handoffd.serverlink import ServerClient, ServerLink
from tests.scaleout.conftest import Cluster, make_cluster, stop_cluster
from tests.scaleout.test_cluster import Recorder, _account, _link, _pair
from tests.services import PostgresServer, RedisServer

pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    pg = PostgresServer().init()
    bus = RedisServer().start()
    cluster = None
    try:
        cluster = make_cluster(tmp_path_factory.mktemp("faulty"), pg, bus, 2)
        yield cluster
    finally:
        if cluster is not None:
            stop_cluster(cluster)
        bus.destroy()
        pg.destroy()


async def _signal_gets_through(
    link: ServerLink, to: str, rec: Recorder, sender: str, data: bytes, within: float = 30.0
) -> None:
    """Send until one arrives (a signal sent while an instance resubscribes may be lost)."""
    async with asyncio.timeout(within):
        while (sender, data) not in rec.signals:
            await link.send_signal(to, data)
            with contextlib.suppress(TimeoutError):
                await rec.until(lambda: (sender, data) in rec.signals, within=1.0)


async def _two_linked(
    cluster: Cluster, account: str
) -> tuple[str, str, ServerClient, ServerClient, ServerLink, ServerLink, Recorder, Recorder]:
    k1, r1 = await _pair(cluster, account, "on-a")
    k2, r2 = await _pair(cluster, account, "on-b")
    c1, c2 = cluster.direct(0, k1, r1), cluster.direct(1, k2, r2)
    link1, rec1 = await _link(c1)
    link2, rec2 = await _link(c2)
    both = {r1.device_id, r2.device_id}
    await rec1.until(lambda: both <= link1.online)
    await rec2.until(lambda: both <= link2.online)
    return r1.device_id, r2.device_id, c1, c2, link1, link2, rec1, rec2


async def test_redis_restarted_presence_rebuilt_signals_resume(faulty: Cluster) -> None:
    d1, d2, c1, c2, link1, link2, rec1, rec2 = await _two_linked(faulty, "erin")
    account = _account(faulty, "erin")
    try:
        faulty.redis.stop()
        faulty.redis.start()  # same port, empty: nothing survived
        bus = redis.Redis.from_url(faulty.redis.url, decode_responses=True)
        try:
            async with asyncio.timeout(30):
                while not {d1, d2} <= set(bus.zrange(f"hp:acct:{account}", 0, -1)):  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
        finally:
            bus.close()
        await _signal_gets_through(link1, d2, rec2, d1, b"after redis restart")
        await _signal_gets_through(link2, d1, rec1, d2, b"and back")
        await rec1.until(lambda: {d1, d2} <= link1.online)
        await rec2.until(lambda: {d1, d2} <= link2.online)
    finally:
        await link1.close()
        await link2.close()
        await c1.close()
        await c2.close()


async def test_database_stopped_503_sockets_stay_then_recovers(faulty: Cluster) -> None:
    d1, d2, c1, c2, link1, link2, _, rec2 = await _two_linked(faulty, "frank")
    try:
        faulty.pg.stop()
        with pytest.raises(ServerError) as e:
            await c1.devices()
        assert (e.value.status, e.value.code) == (503, "store-unavailable")
        # The device sockets stay up and signaling between instances goes on.
        assert link1.connected
        assert link2.connected
        await _signal_gets_through(link1, d2, rec2, d1, b"while the database is away")
        faulty.pg.start()
        codes = []
        async with asyncio.timeout(30):
            while True:
                try:
                    devices = await c1.devices()
                    break
                except ServerError as exc:
                    codes.append(exc.code)
                    await asyncio.sleep(0.5)
        assert set(codes) <= {"store-unavailable", "server-unreachable"}
        assert {d1, d2} <= {d.device_id for d in devices if d.online}
        assert link1.connected
        assert link2.connected
    finally:
        await link1.close()
        await link2.close()
        await c1.close()
        await c2.close()
