"""The LAN lane over real TCP and TLS 1.3 on loopback: who is admitted, who is refused and why.

Real sockets, real TLS, real device certificates; the token store is the real one.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import pytest_asyncio

from handoffd import identity
from handoffd.errors import TransportError
from handoffd.transport.base import PATH_LANE, LocalIdentity, PeerAuthError, PeerRefusedError
from handoffd.transport.lane import LaneDialer, LaneOffer, LaneServer, usable_hosts
from handoffd.transport.lanetoken import LaneTokens
from handoffd.transport.relay import RelayChannel
from tests.transport.helpers import Account, Device

pytestmark = pytest.mark.timeout(120)


@dataclass
class Target:
    device: Device
    tokens: LaneTokens
    server: LaneServer
    channels: list[RelayChannel] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        port = self.server.port
        assert port is not None
        return port

    def offer(self, handoff_id: str, peer: Device) -> LaneOffer:
        token = self.tokens.issue(handoff_id, peer.id)
        return LaneOffer(handoff_id, ("127.0.0.1",), self.port, token)


@pytest.fixture
def account() -> Account:
    return Account()


@pytest_asyncio.fixture
async def target(account: Account) -> AsyncIterator[Target]:
    device = account.device()
    tokens = LaneTokens(device.id)
    holder: list[Target] = []

    async def on_channel(channel: RelayChannel) -> None:
        holder[0].channels.append(channel)

    server = LaneServer(
        "127.0.0.1",
        0,
        local=lambda: device.local,
        tokens=lambda: tokens,
        on_channel=on_channel,
        on_refused=lambda code: holder[0].refused.append(code),
        handshake_timeout=2.0,
    )
    t = Target(device, tokens, server)
    holder.append(t)
    assert await server.start()
    try:
        yield t
    finally:
        for channel in t.channels:
            await channel.close()
        await server.close()
        await server.close()  # idempotent


async def dial(local: LocalIdentity, offer: LaneOffer, peer: str) -> RelayChannel:
    loop = asyncio.get_running_loop()
    channel = await LaneDialer(local, offer).dial(peer, deadline=loop.time() + 10)
    assert isinstance(channel, RelayChannel)
    return channel


async def wait_for(predicate: object, what: str) -> None:
    for _ in range(500):
        if callable(predicate) and predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.asyncio
async def test_lane_carries_messages_both_ways(account: Account, target: Target) -> None:
    sender = account.device()
    channel = await dial(sender.local, target.offer("h1", sender), target.device.id)
    try:
        assert channel.path == PATH_LANE
        assert channel.peer.device_id == target.device.id
        await wait_for(lambda: target.channels, "the target's channel")
        theirs = target.channels[0]
        assert theirs.peer.device_id == sender.id
        assert theirs.path == PATH_LANE
        payload = bytes(range(256)) * 256
        for _ in range(40):
            await channel.send(payload)
        got = b"".join([await theirs.recv() for _ in range(40)])
        assert got == payload * 40
        await theirs.send(b"back")
        assert await channel.recv() == b"back"
        assert channel.bytes_sent == len(payload) * 40
        assert theirs.bytes_received == len(payload) * 40
        assert target.refused == []
    finally:
        await channel.close()


@pytest.mark.asyncio
async def test_token_is_single_use(account: Account, target: Target) -> None:
    sender = account.device()
    offer = target.offer("h2", sender)
    first = await dial(sender.local, offer, target.device.id)
    await first.close()
    with pytest.raises(PeerRefusedError) as info:
        await dial(sender.local, offer, target.device.id)
    assert info.value.peer_code == "lane-token-reused"
    await wait_for(lambda: "lane-token-reused" in target.refused, "the refusal")
    assert len(target.channels) == 1


@pytest.mark.asyncio
async def test_token_bound_to_handoff_and_device(account: Account, target: Target) -> None:
    sender, other = account.device(), account.device()
    offer = target.offer("h3", sender)
    # Another device of the account presenting the sender's token.
    with pytest.raises(PeerRefusedError) as info:
        await dial(other.local, offer, target.device.id)
    assert info.value.peer_code == "lane-token-mismatch"
    # The right device, another handoff id.
    token = target.tokens.issue("h4", sender.id)
    with pytest.raises(PeerRefusedError) as info:
        await dial(sender.local, LaneOffer("h5", offer.hosts, offer.port, token), target.device.id)
    assert info.value.peer_code == "lane-token-mismatch"
    # An unknown token.
    with pytest.raises(PeerRefusedError) as info:
        await dial(
            sender.local, LaneOffer("h3", offer.hosts, offer.port, b"\0" * 16), target.device.id
        )
    assert info.value.peer_code == "lane-token-unknown"
    assert target.channels == []
    await wait_for(lambda: len(target.refused) == 3, "three refusals")


@pytest.mark.asyncio
async def test_other_account_and_revoked_refused(account: Account, target: Target) -> None:
    stranger = Account().device()
    intruder = LocalIdentity(
        key=stranger.key, cert_der=identity.cert_to_der(stranger.cert), trust=account.trust
    )
    offer = LaneOffer("h6", ("127.0.0.1",), target.port, target.tokens.issue("h6", stranger.id))
    with pytest.raises(PeerRefusedError):
        await dial(intruder, offer, target.device.id)
    await wait_for(lambda: "tls-cert-untrusted" in target.refused, "the TLS refusal")

    revoked = account.device()
    target_local = target.device.local
    target.device.local = LocalIdentity(
        key=target.device.key,
        cert_der=identity.cert_to_der(target.device.cert),
        trust=account.trust_revoking(revoked),
    )
    try:
        with pytest.raises(PeerRefusedError) as info:
            await dial(revoked.local, target.offer("h7", revoked), target.device.id)
        assert info.value.peer_code == "cert-revoked"
        await wait_for(lambda: "cert-revoked" in target.refused, "the CRL refusal")
    finally:
        target.device.local = target_local
    assert target.channels == []


@pytest.mark.asyncio
async def test_dialer_refuses_another_device_listening(account: Account, target: Target) -> None:
    sender, expected = account.device(), account.device()
    with pytest.raises(PeerAuthError) as info:
        await dial(sender.local, target.offer("h8", sender), expected.id)
    assert info.value.code == "cert-wrong-device"
    assert target.channels == []


@pytest.mark.asyncio
async def test_plain_tcp_client_closed_after_handshake_timeout(target: Target) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    silent_r, silent_w = await asyncio.open_connection("127.0.0.1", target.port)
    try:
        # The silent client is closed by the listener, having been sent nothing.
        assert await asyncio.wait_for(silent_r.read(), 30) == b""
        # The cleartext client gets at most a TLS alert, then the close (or a reset).
        try:
            data = await asyncio.wait_for(reader.read(), 30)
        except ConnectionError:
            data = b""
        assert b"HTTP" not in data
    finally:
        writer.close()
        silent_w.close()
    await wait_for(lambda: "lane-handshake-timeout" in target.refused, "the timeout refusal")
    await wait_for(lambda: len(target.refused) == 2, "the cleartext refusal")
    assert target.channels == []


@pytest.mark.asyncio
async def test_unreachable_lane_is_a_transport_error(account: Account) -> None:
    sender, other = account.device(), account.device()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    offer = LaneOffer("h9", ("127.0.0.1", "not-an-ip"), port, b"\1" * 16)
    with pytest.raises(TransportError) as info:
        await dial(sender.local, offer, other.id)
    assert info.value.code == "lane-unreachable"


def test_usable_hosts_keeps_ip_literals_only() -> None:
    assert usable_hosts(["10.0.0.2", "x.example", "10.0.0.2", "0.0.0.0", "224.0.0.1", "::1"]) == [
        "10.0.0.2",
        "::1",
    ]
