"""Real aiortc connections over real LAN signaling: exchange, back-pressure, refusals, deadlines."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import time
from collections.abc import Callable

import msgpack
import pytest

from handoffd import envelope as env
from handoffd.errors import HandoffError, TransportError
from handoffd.transport import webrtc
from handoffd.transport.base import (
    MAX_MESSAGE,
    PATH_DIRECT,
    Channel,
    PeerAuthError,
    PeerRefusedError,
)
from handoffd.transport.signaling import lan_signal, send_offer
from handoffd.transport.webrtc.peer import configuration, host_addresses
from tests.transport.helpers import Account, Callee, Device

# More than the default 60 s: real aiortc connections (ICE, DTLS), some waiting out deadlines.
pytestmark = pytest.mark.timeout(120)

FAST = webrtc.WebRtcOptions(connect_timeout=4.0)


async def _connect(caller: Device, callee: Callee, **kw: object) -> webrtc.WebRtcChannel:
    args: dict[str, object] = {
        "local": caller.local,
        "peer_device_id": callee.device.id,
        "signal": callee.signal(),
    }
    args.update(kw)
    return await webrtc.connect(**args)  # type: ignore[arg-type]


async def _pair(
    caller: Device, callee: Callee, **kw: object
) -> tuple[webrtc.WebRtcChannel, Channel]:
    a = await _connect(caller, callee, **kw)
    b = await asyncio.wait_for(callee.channels.get(), 30)
    return a, b


# ---------------------------------------------------------------- happy path


@pytest.mark.asyncio
async def test_exchange_both_ways_with_back_pressure_and_clean_close() -> None:
    account = Account()
    alice, bob = account.device(), account.device()
    async with Callee(bob) as callee:
        a, b = await _pair(alice, callee)
        assert a.path == b.path == PATH_DIRECT
        assert a.peer.device_id == bob.id
        assert b.peer.device_id == alice.id
        assert a.peer.account_id == b.peer.account_id == account.ca.account_id

        await a.send(b"hello")
        assert await b.recv() == b"hello"
        await b.send(b"")
        assert await a.recv() == b""
        big = os.urandom(MAX_MESSAGE)
        await b.send(big)
        assert await a.recv() == big

        with pytest.raises(TransportError) as e:
            await a.send(b"x" * (MAX_MESSAGE + 1))
        assert e.value.code == "message-too-large"

        # A few MiB one way while small messages go the other way.
        payload = os.urandom(5 * 1024 * 1024 + 12345)
        max_buffered = 0

        async def send_all() -> None:
            nonlocal max_buffered
            for i in range(0, len(payload), MAX_MESSAGE):
                await a.send(payload[i : i + MAX_MESSAGE])
                max_buffered = max(max_buffered, a._dc.bufferedAmount)
            await a.close()

        async def echo_back() -> None:
            for i in range(50):
                await b.send(i.to_bytes(4, "big"))

        digest = hashlib.sha256()
        received = 0
        end_code = ""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(send_all())
            tg.create_task(echo_back())
            while True:
                try:
                    msg = await asyncio.wait_for(b.recv(), 30)
                except TransportError as exc:
                    end_code = exc.code
                    break
                digest.update(msg)
                received += len(msg)

        assert end_code == "channel-closed"
        assert received == len(payload)
        assert digest.digest() == hashlib.sha256(payload).digest()
        # send() never lets aiortc's queue grow past the high-water mark plus one message.
        assert max_buffered <= webrtc.HIGH_WATER + MAX_MESSAGE
        assert a.bytes_sent == 5 + len(payload)
        assert a.bytes_received == MAX_MESSAGE
        assert b.bytes_received == 5 + len(payload)
        assert b.bytes_sent == MAX_MESSAGE + 50 * 4
        assert a.closed
        assert b.closed
        with pytest.raises(TransportError) as e:
            await a.send(b"late")
        assert e.value.code == "channel-closed"
        with pytest.raises(TransportError) as e:
            await a.recv()
        assert e.value.code == "channel-closed"
        await b.close()
        await b.close()  # idempotent
        await a.close()


@pytest.mark.asyncio
async def test_abrupt_peer_close_ends_recv_and_send() -> None:
    account = Account()
    alice, bob = account.device(), account.device()
    async with Callee(bob) as callee:
        a, b = await _pair(alice, callee)
        assert isinstance(b, webrtc.WebRtcChannel)
        await b._pc.close()  # SCTP ABORT, no graceful stream reset
        with pytest.raises(TransportError) as e:
            await asyncio.wait_for(a.recv(), 30)
        assert e.value.code == "channel-closed"
        assert a.closed
        with pytest.raises(TransportError) as e:
            await a.send(b"x")
        assert e.value.code == "channel-closed"
        await a.close()
        await b.close()


@pytest.mark.asyncio
async def test_dialer_with_lan_signal() -> None:
    account = Account()
    alice, bob = account.device(), account.device()
    async with Callee(bob) as callee:

        async def resolve(device_id: str) -> tuple[str, int]:
            assert device_id == bob.id
            return "127.0.0.1", callee.server.port

        dialer = webrtc.WebRtcDialer(alice.local, lan_signal(resolve, alice.local))
        loop = asyncio.get_running_loop()
        a = await dialer.dial(bob.id, deadline=loop.time() + 20)
        b = await asyncio.wait_for(callee.channels.get(), 30)
        await b.send(b"from bob")
        assert await a.recv() == b"from bob"
        assert dialer.name == "webrtc"
        await a.close()
        await b.close()


@pytest.mark.asyncio
async def test_loopback_only_candidates_connect() -> None:
    """127.0.0.1 host candidates (which aioice never offers by itself) carry a connection."""
    account = Account()
    alice, bob = account.device(), account.device()
    only_loopback = webrtc.WebRtcOptions(host_addresses=("127.0.0.1",))
    async with Callee(bob, options=only_loopback) as callee:
        a, b = await _pair(alice, callee, options=only_loopback)
        for ch in (a, b):
            assert isinstance(ch, webrtc.WebRtcChannel)
            sctp = ch._pc.sctp
            assert sctp is not None
            hosts = {c.ip for c in sctp.transport.transport.iceGatherer.getLocalCandidates()}
            assert hosts == {"127.0.0.1"}
        await a.send(b"over loopback")
        assert await b.recv() == b"over loopback"
        await a.close()
        await b.close()


def test_host_address_policy() -> None:
    found = ["192.0.2.2"]
    assert host_addresses(found, webrtc.WebRtcOptions()) == ["192.0.2.2"]
    assert host_addresses([], webrtc.WebRtcOptions()) == ["127.0.0.1"]
    assert host_addresses([], webrtc.WebRtcOptions(loopback=False)) == []
    assert host_addresses(found, webrtc.WebRtcOptions(loopback=True)) == [
        "192.0.2.2",
        "127.0.0.1",
    ]
    assert host_addresses(found, webrtc.WebRtcOptions(host_addresses=("10.1.2.3",))) == ["10.1.2.3"]
    # Never aiortc's default public STUN server.
    assert configuration(webrtc.WebRtcOptions()).iceServers == []


# ---------------------------------------------------------------- refusals by the callee


async def _refused_by_callee(
    caller: Device,
    callee_device: Device,
    *,
    peer_device_id: str | None = None,
    tamper: Callable[[bytes], bytes] | None = None,
) -> str:
    """Connect and expect the callee to refuse the offer; return the callee's code."""
    async with Callee(callee_device) as callee:
        with pytest.raises(PeerRefusedError) as e:
            await _connect(
                caller,
                callee,
                peer_device_id=peer_device_id or callee_device.id,
                signal=callee.signal(tamper),
                options=FAST,
            )
        assert len(callee.errors) == 1
        assert e.value.peer_code == callee.errors[0].code
        assert isinstance(callee.errors[0], PeerAuthError)
        # Refused before any peer connection exists: nothing accepted, no channel.
        assert callee.accepted == []
        assert callee.channels.empty()
        return callee.errors[0].code


@pytest.mark.asyncio
async def test_refuses_device_of_another_account() -> None:
    mallory = Account().device()
    bob = Account().device()
    assert await _refused_by_callee(mallory, bob) == "cert-wrong-account"


@pytest.mark.asyncio
async def test_refuses_expired_device_certificate() -> None:
    account = Account()
    old = account.device(
        issued=dt.datetime.now(dt.UTC) - dt.timedelta(days=40), lifetime=dt.timedelta(days=30)
    )
    assert await _refused_by_callee(old, account.device()) == "cert-expired"


@pytest.mark.asyncio
async def test_refuses_revoked_device() -> None:
    account = Account()
    alice = account.device()
    bob = account.device(trust=account.trust_revoking(alice))
    assert await _refused_by_callee(alice, bob) == "cert-revoked"


@pytest.mark.asyncio
async def test_refuses_envelope_addressed_to_another_device() -> None:
    account = Account()
    alice, bob, carol = account.device(), account.device(), account.device()
    code = await _refused_by_callee(alice, bob, peer_device_id=carol.id)
    assert code == "envelope-wrong-recipient"


def _change_sdp_fingerprint(payload: bytes) -> bytes:
    inner = msgpack.unpackb(payload, raw=False)
    sdp: str = inner["sdp"]
    line = next(x for x in sdp.split("\r\n") if x.startswith("a=fingerprint:sha-256 "))
    flipped = line[:-2] + ("00" if not line.endswith("00") else "11")
    inner["sdp"] = sdp.replace(line, flipped)
    return bytes(msgpack.packb(inner, use_bin_type=True))


@pytest.mark.asyncio
async def test_refuses_sdp_changed_after_signing() -> None:
    """An attacker without the key edits the SDP's fingerprint: the signature fails."""
    account = Account()

    def tamper(offer: bytes) -> bytes:
        outer = msgpack.unpackb(offer, raw=False)
        body = msgpack.unpackb(outer["body"], raw=False)
        body[6] = _change_sdp_fingerprint(body[6])
        outer["body"] = msgpack.packb(body, use_bin_type=True)
        return bytes(msgpack.packb(outer, use_bin_type=True))

    code = await _refused_by_callee(account.device(), account.device(), tamper=tamper)
    assert code == "envelope-bad-signature"


@pytest.mark.asyncio
async def test_refuses_sdp_fingerprint_not_in_signed_list() -> None:
    """Even correctly signed, an SDP whose fingerprints differ from the signed list is refused."""
    account = Account()
    alice, bob = account.device(), account.device()

    def tamper(offer: bytes) -> bytes:
        opened = env.open_envelope(
            offer,
            purpose=webrtc.PURPOSE_OFFER,
            recipient=bob.id,
            trust=account.trust,
            now=time.time(),
            replay=env.ReplayCache(),
        )
        return env.seal(
            alice.key,
            alice.local.cert_der,
            purpose=webrtc.PURPOSE_OFFER,
            recipient=bob.id,
            payload=_change_sdp_fingerprint(opened.payload),
            now=time.time(),
        )

    code = await _refused_by_callee(alice, bob, tamper=tamper)
    assert code == "sdp-fingerprint-mismatch"


@pytest.mark.asyncio
async def test_refuses_replayed_offer() -> None:
    account = Account()
    alice, bob = account.device(), account.device()
    async with Callee(bob) as callee:
        a, b = await _pair(alice, callee)
        await a.close()
        await b.close()
        replayed = callee.offers[0]
        with pytest.raises(PeerRefusedError) as e:
            await _connect(
                alice, callee, signal=callee.signal(lambda _offer: replayed), options=FAST
            )
        assert e.value.peer_code == "envelope-replayed"
        assert [x.code for x in callee.errors] == ["envelope-replayed"]
        assert len(callee.accepted) == 1


# ---------------------------------------------------------------- refusals by the caller


@pytest.mark.asyncio
async def test_caller_refuses_revoked_callee() -> None:
    account = Account()
    bob = account.device()
    alice = account.device(trust=account.trust_revoking(bob))
    async with Callee(bob, options=webrtc.WebRtcOptions(connect_timeout=2.0)) as callee:
        with pytest.raises(PeerAuthError) as e:
            await _connect(alice, callee, options=FAST)
        assert e.value.code == "cert-revoked"
        # Bob answered, but the caller never connects: bob gets no channel, only a timeout.
        await asyncio.wait_for(callee.done.wait(), 30)
        assert [x.code for x in callee.errors] == ["connect-timeout"]
        assert callee.channels.empty()


@pytest.mark.asyncio
async def test_caller_refuses_tampered_answer() -> None:
    account = Account()
    alice, bob = account.device(), account.device()
    async with Callee(bob, options=webrtc.WebRtcOptions(connect_timeout=2.0)) as callee:
        inner = callee.signal()

        async def signal(offer: bytes) -> bytes:
            answer = await inner(offer)
            outer = msgpack.unpackb(answer, raw=False)
            body = msgpack.unpackb(outer["body"], raw=False)
            body[6] = _change_sdp_fingerprint(body[6])
            outer["body"] = msgpack.packb(body, use_bin_type=True)
            return bytes(msgpack.packb(outer, use_bin_type=True))

        with pytest.raises(PeerAuthError) as e:
            await _connect(alice, callee, signal=signal, options=FAST)
        assert e.value.code == "envelope-bad-signature"
        await asyncio.wait_for(callee.done.wait(), 30)
        assert callee.channels.empty()


@pytest.mark.asyncio
async def test_in_band_confirmation_binds_the_nonces() -> None:
    """A callee whose confirmation binds other nonces is refused in-band, before any byte."""
    account = Account()
    alice, bob = account.device(), account.device()
    async with Callee(bob, tamper_binding=True) as callee:
        with pytest.raises(TransportError) as e:
            await _connect(alice, callee, options=FAST)
        assert e.value.code in {"confirm-bad-signature", "peer-closed-handshake"}
        await asyncio.wait_for(callee.done.wait(), 30)
        assert callee.channels.empty()
        assert len(callee.errors) == 1
        assert callee.errors[0].code in {"confirm-bad-signature", "peer-closed-handshake"}
        # At least one side saw the bad signature itself.
        assert "confirm-bad-signature" in {e.value.code, callee.errors[0].code}


# ---------------------------------------------------------------- deadlines


@pytest.mark.asyncio
async def test_peer_that_never_answers_times_out() -> None:
    account = Account()
    alice, bob = account.device(), account.device()
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()

    async def signal(offer: bytes) -> bytes:
        return await send_offer(
            "127.0.0.1", port, offer, local=alice.local, peer_device_id=bob.id, timeout=120
        )

    started = loop.time()
    try:
        with pytest.raises(TransportError) as e:
            await webrtc.connect(
                local=alice.local,
                peer_device_id=bob.id,
                signal=signal,
                deadline=loop.time() + 1.5,
            )
        assert e.value.code == "connect-timeout"
        # Our deadline, not aiortc's ~30 s ICE failure nor the signal's 120 s (generous bound).
        assert loop.time() - started < 25
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_peer_that_answers_then_vanishes_times_out() -> None:
    account = Account()
    alice, bob = account.device(), account.device()
    loop = asyncio.get_running_loop()

    async def signal(offer: bytes) -> bytes:
        acc = await webrtc.accept(local=bob.local, offer_envelope=offer)
        await acc.close()
        return acc.answer

    started = loop.time()
    with pytest.raises(TransportError) as e:
        await webrtc.connect(
            local=alice.local, peer_device_id=bob.id, signal=signal, deadline=loop.time() + 2
        )
    assert e.value.code in {"connect-timeout", "ice-failed"}
    assert loop.time() - started < 25


@pytest.mark.asyncio
async def test_connect_rejects_bad_peer_id() -> None:
    account = Account()
    alice = account.device()

    async def signal(offer: bytes) -> bytes:
        raise AssertionError("must not signal")

    for bad in ("nope", alice.id):
        with pytest.raises(HandoffError) as e:
            await webrtc.connect(local=alice.local, peer_device_id=bad, signal=signal)
        assert e.value.code == "bad-peer"
