"""Two handoff-server instances behind nginx, sharing PostgreSQL and Redis (all real processes)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

import aiohttp
import pytest
import redis

from handoffd import identity
from handoffd.errors import ServerError
from handoffd.serverlink import JoinResult, RelayTicket, ServerClient, ServerLink, parse_invite
from handoffd.wire import auth
from tests.scaleout.conftest import Cluster
from tests.server.helpers import cli_invite, create_account

pytestmark = pytest.mark.asyncio


class Recorder:
    """What a ServerLink reports."""

    def __init__(self) -> None:
        self.signals: list[tuple[str, bytes]] = []
        self.errors: list[ServerError] = []
        self.changed = asyncio.Event()

    def on_presence(self, online: frozenset[str]) -> None:
        self.changed.set()

    def on_signal(self, sender: str, data: bytes) -> None:
        self.signals.append((sender, data))
        self.changed.set()

    def on_error(self, error: ServerError) -> None:
        self.errors.append(error)
        self.changed.set()

    async def until(self, check: Any, within: float = 20.0) -> None:
        async with asyncio.timeout(within):
            while not check():
                self.changed.clear()
                if check():
                    return
                await self.changed.wait()


async def _link(client: ServerClient) -> tuple[ServerLink, Recorder]:
    rec = Recorder()
    link = client.connect(rec.on_presence, rec.on_signal, on_error=rec.on_error)
    await link.start()
    async with asyncio.timeout(20):
        await link.wait_connected()
    return link, rec


_accounts: dict[tuple[str, str], str] = {}


def _account(cluster: Cluster, name: str) -> str:
    """The id of account ``name`` in this cluster's database (created on first use)."""
    if (cluster.database, name) not in _accounts:
        _accounts[cluster.database, name] = create_account(cluster.instances[0].data, name)
    return _accounts[cluster.database, name]


async def _pair(cluster: Cluster, account: str, name: str) -> tuple[Any, JoinResult]:
    """A new device of ``account`` paired through nginx with a CLI invite."""
    _account(cluster, account)
    url, _ = cli_invite(cluster.instances[0].data, account)
    invite = parse_invite(url)
    assert invite.server_url == cluster.url
    assert invite.fingerprint == cluster.fingerprint  # devices pin nginx's certificate
    key = identity.generate_device_key()
    async with cluster.client() as joiner:
        result = await joiner.join(invite, key=key, name=name, platform="linux")
    return key, result


async def _raw(
    url: str, method: str, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method,
            url + path,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=20),
        ) as resp,
    ):
        return resp.status, json.loads(await resp.read())


async def test_presence_and_signals_across_instances(cluster: Cluster) -> None:
    k1, r1 = await _pair(cluster, "alice", "on-a")
    k2, r2 = await _pair(cluster, "alice", "on-b")
    c1, c2 = cluster.direct(0, k1, r1), cluster.direct(1, k2, r2)
    link1, rec1 = await _link(c1)
    link2, rec2 = await _link(c2)
    try:
        both = {r1.device_id, r2.device_id}
        await rec1.until(lambda: both <= link1.online)
        await rec2.until(lambda: both <= link2.online)
        # The device list of either instance knows who is online on the other.
        assert both <= {d.device_id for d in await c1.devices() if d.online}
        assert both <= {d.device_id for d in await c2.devices() if d.online}

        await link1.send_signal(r2.device_id, b"a to b")
        await rec2.until(lambda: bool(rec2.signals))
        assert rec2.signals == [(r1.device_id, b"a to b")]
        await link2.send_signal(r1.device_id, b"b to a")
        await rec1.until(lambda: bool(rec1.signals))
        assert rec1.signals == [(r2.device_id, b"b to a")]

        # Another account's device on the other instance is neither seen nor reachable.
        k3, r3 = await _pair(cluster, "bob", "bob-on-b")
        c3 = cluster.direct(1, k3, r3)
        link3, rec3 = await _link(c3)
        try:
            await link1.send_signal(r3.device_id, b"cross")
            await rec1.until(lambda: bool(rec1.errors))
            assert rec1.errors[0].code == "target-unavailable"
            assert r3.device_id not in link1.online
            assert rec3.signals == []
        finally:
            await link3.close()
            await c3.close()

        await link2.close()
        await rec1.until(lambda: r2.device_id not in link1.online)
    finally:
        await link1.close()
        await link2.close()
        await c1.close()
        await c2.close()


async def test_invite_from_a_redeemed_on_b_exactly_once(cluster: Cluster) -> None:
    k1, r1 = await _pair(cluster, "alice", "inviter")
    async with cluster.direct(0, k1, r1) as on_a:
        created = await on_a.create_invite()
    invite = parse_invite(created.url)
    assert invite.fingerprint == cluster.fingerprint

    async def join_on(index: int) -> str:
        url = cluster.instances[index].url  # straight to one instance, not through nginx
        async with ServerClient(url, fingerprint=None) as c:
            direct = dataclasses.replace(invite, server_url=url, fingerprint=None)
            try:
                await c.join(
                    direct, key=identity.generate_device_key(), name=f"j{index}", platform="linux"
                )
            except ServerError as exc:
                return exc.code
            return "joined"

    results = await asyncio.gather(join_on(1), join_on(0))
    assert sorted(results) == ["invite-used", "joined"]
    assert await join_on(1) == "invite-used"


async def test_revoked_on_a_is_cut_off_on_b_and_refused_on_both(cluster: Cluster) -> None:
    k1, r1 = await _pair(cluster, "alice", "admin")
    kv, rv = await _pair(cluster, "alice", "victim")
    victim = cluster.direct(1, kv, rv)
    vlink, vrec = await _link(victim)
    try:
        async with cluster.direct(0, k1, r1) as admin:
            started = time.monotonic()
            await admin.revoke(rv.device_id)
        await vrec.until(lambda: any(e.code == "device-revoked" for e in vrec.errors), within=5)
        # Goal: within 2 s (not asserted as a timing: the machine is shared and noisy).
        print(f"revocation reached the other instance in {time.monotonic() - started:.2f} s")
        for index in (0, 1):
            async with cluster.direct(index, kv, rv) as c:
                with pytest.raises(ServerError) as e:
                    await c.devices()
                assert e.value.code == "device-revoked"
    finally:
        await vlink.close()
        await victim.close()


async def test_signed_request_replayed_to_the_other_instance_is_refused(cluster: Cluster) -> None:
    key, _ = await _pair(cluster, "alice", "replayer")
    body = b"{}"
    headers = auth.sign_request(key, "POST", "/v1/invites", body, now=time.time())
    status, _ = await _raw(cluster.instances[0].url, "POST", "/v1/invites", body, headers)
    assert status == 201
    status, answer = await _raw(cluster.instances[1].url, "POST", "/v1/invites", body, headers)
    assert (status, answer["error"]["code"]) == (401, "auth-replayed")


async def test_short_code_lockout_holds_across_instances(cluster: Cluster) -> None:
    _account(cluster, "carol")
    _, code = cli_invite(cluster.instances[0].data, "carol")
    plain = code.replace("-", "")
    wrong = plain[:4] + ("1" if plain[4] != "1" else "2") + plain[5:]
    codes = []
    for i in range(6):
        async with ServerClient(cluster.instances[i % 2].url, fingerprint=None) as c:
            invite = parse_invite(wrong if i < 5 else code, server_url=c.server_url)
            try:
                await c.join(invite, key=identity.generate_device_key(), name="x", platform="l")
            except ServerError as exc:
                codes.append(exc.code)
    assert codes == ["invite-unknown"] * 5 + ["invite-locked"]


async def test_instance_killed_devices_move_to_the_other(cluster: Cluster) -> None:
    k1, r1 = await _pair(cluster, "dave", "stays")
    k2, r2 = await _pair(cluster, "dave", "moves")
    c1, c2 = cluster.client(k1, r1), cluster.client(k2, r2)  # both through nginx
    link1, rec1 = await _link(c1)
    link2, rec2 = await _link(c2)
    bus = redis.Redis.from_url(cluster.redis.url, decode_responses=True)
    victim = 0
    try:
        both = {r1.device_id, r2.device_id}
        await rec1.until(lambda: both <= link1.online)
        holder = bus.get(f"hp:dev:{r2.device_id}")
        ids = [cluster.instance_id(i) for i in range(len(cluster.instances))]
        victim = ids.index(str(holder))
        proc = cluster.instances[victim].proc
        assert proc is not None
        proc.kill()  # SIGKILL: no goodbye, its Redis keys just stop being refreshed
        proc.wait(timeout=15)
        survivor = ids[1 - victim]

        def moved() -> bool:
            return bus.get(f"hp:dev:{r2.device_id}") == survivor and both <= link1.online

        # Reconnect backoff (0.5 s, doubling, jitter) + nginx skipping the dead upstream.
        async with asyncio.timeout(40):
            while not moved() or not link2.connected:  # noqa: ASYNC110 - Redis has no event here
                await asyncio.sleep(0.2)
        await link1.send_signal(r2.device_id, b"after the move")
        await rec2.until(lambda: (r1.device_id, b"after the move") in rec2.signals)
    finally:
        bus.close()
        await link1.close()
        await link2.close()
        await c1.close()
        await c2.close()
        cluster.instances[victim].stop()
        cluster.start_instance(victim)


async def test_relay_session_across_instances(cluster: Cluster) -> None:
    k1, r1 = await _pair(cluster, "gina", "opener")
    k2, r2 = await _pair(cluster, "gina", "target")
    c1, c2 = cluster.direct(0, k1, r1), cluster.direct(1, k2, r2)
    offers: list[RelayTicket] = []
    offered = asyncio.Event()

    def on_relay(ticket: RelayTicket) -> None:
        offers.append(ticket)
        offered.set()

    rec1, rec2 = Recorder(), Recorder()
    link1 = c1.connect(rec1.on_presence, rec1.on_signal, on_error=rec1.on_error)
    link2 = c2.connect(rec2.on_presence, rec2.on_signal, on_error=rec2.on_error, on_relay=on_relay)
    await link1.start()
    await link2.start()
    joiners: list[ServerClient] = []
    try:
        async with asyncio.timeout(20):
            await link1.wait_connected()
            await link2.wait_connected()
        await rec1.until(lambda: r2.device_id in link1.online)
        for route in ("both piped through instance B", "both through nginx"):
            # The session is held by instance A (the opener's socket is there); the offer
            # reaches the target on B through the bus.
            offered.clear()
            offers.clear()
            ticket = await link1.open_relay(r2.device_id)
            async with asyncio.timeout(20):
                await offered.wait()
            if route.startswith("both piped"):
                j1, j2 = cluster.direct(1, k1, r1), cluster.direct(1, k2, r2)
            else:
                j1, j2 = cluster.client(k1, r1), cluster.client(k2, r2)
            joiners += [j1, j2]
            s1, s2 = await asyncio.gather(j1.relay_stream(ticket), j2.relay_stream(offers[0]))
            try:
                await s1.send(b"from the opener " + route.encode())
                await s2.send(b"from the target " + route.encode())
                async with asyncio.timeout(20):
                    assert await s2.recv() == b"from the opener " + route.encode()
                    assert await s1.recv() == b"from the target " + route.encode()
                big = bytes(range(256)) * 400
                await s1.send(big)
                async with asyncio.timeout(20):
                    assert await s2.recv() == big
            finally:
                await s1.close()
                await s2.close()
            if route.startswith("both piped"):
                piped = (
                    cluster.instances[1]
                    .log.read_text()
                    .count(f'relay join piped" session={ticket.session}')
                )
                assert piped == 2
    finally:
        await link1.close()
        await link2.close()
        for c in (c1, c2, *joiners):
            await c.close()


async def test_forged_relay_via_claim_is_refused(cluster: Cluster) -> None:
    """A join claiming to be piped from another instance needs a claim stored in Redis."""
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            cluster.instances[0].url + "/v1/relay",
            headers={"X-Handoff-Relay-Via": "A" * 43},
        ) as ws,
    ):
        first = await ws.receive_json(timeout=10)
        assert first["type"] == "error"
        assert first["error"]["code"] == "auth-invalid"
        assert first.get("fatal") is True
        closing = await ws.receive(timeout=10)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
