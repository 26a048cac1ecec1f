"""The relay path end to end: a real handoff-server process over pinned HTTPS, devices with real certificates."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import secrets
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from handoffd import identity
from handoffd.errors import ServerError, TransportError
from handoffd.serverlink import RelayTicket
from handoffd.transport.base import PeerAuthError, PeerRefusedError
from handoffd.transport.relay import RelayChannel
from tests.relay.helpers import (
    Node,
    Paired,
    drain,
    pair_devices,
    pattern,
    recv_all,
    send_all,
    start_server,
    wait_stats,
)
from tests.support.processes import ServerProcess

# More than the default 60 s: a real server and relayed transfers between real devices.
pytestmark = pytest.mark.timeout(120)


@dataclass(frozen=True)
class World:
    server: ServerProcess
    tap: Path
    alice: str
    a: Paired
    b: Paired
    c: Paired
    r: Paired  # revoked by a test
    x: Paired  # bob's device


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("relay")
    tap = base / "tap"
    tap.mkdir()
    server = start_server(base, {"tap_dir": str(tap)})
    try:
        a, b, c, r = pair_devices(server, "alice", 4)
        (x,) = pair_devices(server, "bob", 1)
        yield World(server, tap, a.result.account_id, a, b, c, r, x)
    finally:
        server.stop()


def deadline(seconds: float = 15.0) -> float:
    return asyncio.get_running_loop().time() + seconds


async def dial(src: Node, dst: Node) -> tuple[RelayChannel, RelayChannel]:
    await src.wait_online(dst.id)
    channel = await src.dialer().dial(dst.id, deadline=deadline())
    assert isinstance(channel, RelayChannel)
    peer = await asyncio.wait_for(dst.channels.get(), 10)
    return channel, peer


def account_ca(server: ServerProcess, account_id: str) -> identity.AccountCA:
    """The account CA as the server holds it (to issue a CRL the server has not published)."""
    db = sqlite3.connect(server.data / "server.db", timeout=10)
    try:
        key_pem, cert_pem = db.execute(
            "SELECT ca_key_pem, ca_cert_pem FROM accounts WHERE id = ?", (account_id,)
        ).fetchone()
    finally:
        db.close()
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return identity.AccountCA(account_id, key, identity.load_cert(cert_pem))


def crl_revoking(world: World, *devices: Paired) -> identity.TrustAnchor:
    now = dt.datetime.now(dt.UTC)
    ca = account_ca(world.server, world.alice)
    crl = identity.issue_crl(
        ca,
        [
            identity.Revoked(serial=d.result.device_cert.serial_number, revoked_at=now)
            for d in devices
        ],
        number=10_000 + secrets.randbelow(1_000_000),
        now=now,
    )
    return identity.TrustAnchor.from_ca(ca.cert, crl)


# ---------------------------------------------------------------- data


@pytest.mark.asyncio
async def test_several_mib_both_ways_intact(world: World) -> None:
    async with Node(world.server, world.a) as na, Node(world.server, world.b) as nb:
        channel, peer = await dial(na, nb)
        try:
            assert channel.path == peer.path == "relay"
            assert channel.peer.device_id == nb.id
            assert peer.peer.device_id == na.id
            assert channel.bytes_sent == channel.bytes_received == 0  # hellos not counted
            up = pattern(5 * 1024 * 1024 + 17, b"up")
            down = pattern(3 * 1024 * 1024 + 5, b"down")
            _, got_up, _, got_down = await asyncio.gather(
                send_all(channel, up), recv_all(peer), send_all(peer, down), recv_all(channel)
            )
            assert identity.fingerprint(got_up) == identity.fingerprint(up)
            assert identity.fingerprint(got_down) == identity.fingerprint(down)
            assert channel.bytes_sent == peer.bytes_received == len(up)
            assert peer.bytes_sent == channel.bytes_received == len(down)
            stats = await na.client.relays()
            assert stats["active"] == 1
            with pytest.raises(TransportError) as big:
                await channel.send(b"x" * (64 * 1024 + 1))
            assert big.value.code == "message-too-large"
        finally:
            await channel.close()
        await channel.close()  # idempotent
        with pytest.raises(TransportError) as closed:
            await peer.recv()
        assert closed.value.code == "channel-closed"
        assert peer.closed
        with pytest.raises(TransportError) as after:
            await channel.send(b"late")
        assert after.value.code == "channel-closed"
        await wait_stats(na.client, active=0, pending=0)


@pytest.mark.asyncio
async def test_messages_sent_before_close_all_arrive(world: World) -> None:
    async with Node(world.server, world.a) as na, Node(world.server, world.b) as nb:
        channel, peer = await dial(na, nb)
        for i in range(200):
            await channel.send(i.to_bytes(4, "big") * 1000)
        await channel.close()
        got, end = await drain(peer)
        assert end.code == "channel-closed"
        assert [int.from_bytes(m[:4], "big") for m in got] == list(range(200))


@pytest.mark.asyncio
async def test_relay_never_sees_plaintext(world: World) -> None:
    before = set(world.tap.iterdir())
    marker = b"HANDOFF-PLAINTEXT-MARKER-" + secrets.token_hex(16).encode()
    async with Node(world.server, world.a) as na, Node(world.server, world.b) as nb:
        channel, peer = await dial(na, nb)
        try:
            message = marker * (60_000 // len(marker))
            for _ in range(20):
                await channel.send(message)
                assert await peer.recv() == message
                await peer.send(marker)
                assert await channel.recv() == marker
        finally:
            await channel.close()
        await wait_stats(na.client, active=0, pending=0)
    taps = sorted(set(world.tap.iterdir()) - before)
    assert len(taps) == 2  # one file per direction of this session
    relayed = [t.read_bytes() for t in taps]
    # The tap saw every byte (ciphertext is a little larger than the plaintext) ...
    assert sum(len(r) for r in relayed) >= 20 * (len(message) + len(marker))
    # ... and the marker appears nowhere in it, not even its first 16 bytes.
    for data in relayed:
        assert marker not in data
        assert marker[:16] not in data


# ---------------------------------------------------------------- who may join


@pytest.mark.asyncio
async def test_other_account_and_other_devices_cannot_join(world: World) -> None:
    async with (
        Node(world.server, world.a) as na,
        Node(world.server, world.b, accept=False) as nb,
        Node(world.server, world.c, accept=False) as nc,
        Node(world.server, world.x) as nx,
    ):
        await na.wait_online(nb.id)
        ticket = await na.link.open_relay(nb.id)
        assert ticket.initiator
        assert ticket.peer == nb.id
        await nb.wait_offer()
        offer = nb.offers[0]
        assert offer.session == ticket.session
        assert offer.peer == na.id
        assert offer.token != ticket.token

        # Bob's device with Alice's ticket, and Alice's third device: refused, same code.
        for node, stolen in ((nx, ticket), (nx, offer), (nc, ticket), (nc, offer)):
            with pytest.raises(ServerError) as refused:
                await node.client.relay_stream(stolen, deadline=deadline(10))
            assert refused.value.code == "relay-forbidden"
        # Bob cannot open a relay to Alice's device (the same answer as for offline devices).
        with pytest.raises(ServerError) as unavailable:
            await nx.link.open_relay(nb.id)
        assert unavailable.value.code == "target-unavailable"
        # A wrong token for the right device.
        forged = RelayTicket(
            session=offer.session,
            token="A" * 43,
            peer=offer.peer,
            expires_in=offer.expires_in,
            initiator=False,
        )
        with pytest.raises(ServerError) as wrong:
            await nb.client.relay_stream(forged, deadline=deadline(10))
        assert wrong.value.code == "relay-token-invalid"
        # A non-ASCII token: wrong too (it raised UnicodeEncodeError in the server before).
        for token in ("é" * 43, "\ud800"):
            with pytest.raises(ServerError) as wrong:
                await nb.client.relay_stream(
                    dataclasses.replace(forged, token=token), deadline=deadline(10)
                )
            assert wrong.value.code == "relay-token-invalid"

        # The initiator's token is single use: two joins with it at once, and whichever the
        # server takes second is refused while the other waits for the peer.
        joins = [
            asyncio.create_task(na.client.relay_stream(ticket, deadline=deadline(30)))
            for _ in range(2)
        ]
        done, _ = await asyncio.wait(joins, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1, done
        (loser,) = done
        with pytest.raises(ServerError) as reused:
            loser.result()
        assert reused.value.code == "relay-token-used"
        (first,) = (j for j in joins if j is not loser)
        assert not first.done()  # joined, waiting for the peer
        second = await nb.client.relay_stream(offer, deadline=deadline(30))
        stream = await first
        try:
            # Started: the session takes no more joins at all.
            with pytest.raises(ServerError) as late:
                await nb.client.relay_stream(offer, deadline=deadline(10))
            assert late.value.code == "relay-unknown"
            await stream.send(b"opaque")
            assert await second.recv() == b"opaque"
        finally:
            await stream.close()
            await second.close()
        await wait_stats(na.client, active=0, pending=0)


@pytest.mark.asyncio
async def test_declined_offer_ends_the_dial(world: World) -> None:
    async with Node(world.server, world.a) as na, Node(world.server, world.b, accept=False) as nb:
        await na.wait_online(nb.id)
        dial_task = asyncio.create_task(na.dialer().dial(nb.id, deadline=deadline()))
        await nb.wait_offer()
        await nb.link.close_relay(nb.offers[0].session)
        with pytest.raises(TransportError) as declined:
            await dial_task
        assert declined.value.code == "relay-closed"
        await wait_stats(na.client, active=0, pending=0)


# ---------------------------------------------------------------- revocation


@pytest.mark.asyncio
async def test_revoked_peer_refused_inside_tls(world: World) -> None:
    """Our own CRL refuses a peer the server still lets through (TLS-level check)."""
    async with Node(world.server, world.a) as na, Node(world.server, world.b) as nb:
        await na.wait_online(nb.id)
        # The initiator holds a CRL revoking the target.
        na.trust = crl_revoking(world, world.b)
        with pytest.raises(PeerAuthError) as ours:
            await na.dialer().dial(nb.id, deadline=deadline())
        assert ours.value.code == "cert-revoked"
        async with asyncio.timeout(10):
            await nb.failed.wait()
        assert isinstance(nb.errors[-1][1], PeerRefusedError)
        assert nb.errors[-1][1].peer_code == "cert-revoked"
        assert nb.channels.empty()

        # The target holds a CRL revoking the initiator.
        na.trust = identity.TrustAnchor.from_ca(world.a.result.account_ca, world.a.result.crl)
        nb.trust = crl_revoking(world, world.a)
        nb.failed.clear()
        with pytest.raises(PeerRefusedError) as theirs:
            await na.dialer().dial(nb.id, deadline=deadline())
        assert theirs.value.peer_code == "cert-revoked"
        async with asyncio.timeout(10):
            await nb.failed.wait()
        assert isinstance(nb.errors[-1][1], PeerAuthError)
        assert nb.errors[-1][1].code == "cert-revoked"
        assert nb.channels.empty()
        await wait_stats(na.client, active=0, pending=0)


@pytest.mark.asyncio
async def test_revoked_device_refused_by_the_server(world: World) -> None:
    async with Node(world.server, world.a) as na, Node(world.server, world.r, accept=False) as nr:
        await na.wait_online(nr.id)
        ticket_task = asyncio.create_task(na.link.open_relay(nr.id))
        ticket = await ticket_task
        await nr.wait_offer()
        waiting = asyncio.create_task(na.client.relay_stream(ticket, deadline=deadline(20)))
        await wait_stats(na.client, pending=1)
        await na.client.revoke(nr.id)
        # The pending session is ended for the initiator ...
        with pytest.raises(ServerError) as ended:
            await waiting
        assert ended.value.code == "device-revoked"
        # ... the revoked device cannot join with the offer it got ...
        with pytest.raises(ServerError) as refused:
            await nr.client.relay_stream(nr.offers[0], deadline=deadline(10))
        assert refused.value.code == "device-revoked"
        # ... and nobody can open a relay to it.
        with pytest.raises(ServerError) as gone:
            await na.link.open_relay(nr.id)
        assert gone.value.code == "target-unavailable"
        await wait_stats(na.client, active=0, pending=0)
