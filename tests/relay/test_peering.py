"""The engine's server path: request/answer through the server, and WebRTC signaled that way.

Against a real ``handoff-server`` (HTTPS, pinned) with devices paired through it; WebRTC
connections are real aiortc on loopback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handoffd import identity
from handoffd.errors import HandoffError, TransportError
from handoffd.peering import REF_LEN, DirectDialer, ServerPath, SignalFrame
from handoffd.transport import signaling, webrtc
from handoffd.transport.base import LocalIdentity, PeerRefusedError
from handoffd.transport.relay import RelayChannel
from tests.relay.helpers import Paired, pair_devices, start_server
from tests.support.processes import ServerProcess

# More than the default 60 s: WebRTC (ICE, DTLS) signaled through a real server.
pytestmark = pytest.mark.timeout(120)

LOOPBACK = webrtc.WebRtcOptions(host_addresses=("127.0.0.1",))


# ---------------------------------------------------------------- frames (pure)


def test_signal_frame_round_trip_and_strictness() -> None:
    ref = bytes(range(REF_LEN))
    frame = SignalFrame(ref, signaling.KIND_OFFER, b"envelope")
    assert SignalFrame.decode(frame.encode()) == frame
    err = SignalFrame.error(ref, "cert-revoked", "revoked\x00device")
    decoded = SignalFrame.decode(err.encode())
    assert decoded.kind == signaling.KIND_ERROR
    assert signaling.decode_error(decoded.body) == ("cert-revoked", "revoked?device")
    data = frame.encode()
    for bad in (
        data[:REF_LEN],
        data[:-1],
        data + b"x",
        data[: REF_LEN + 4] + b"\x09" + data[REF_LEN + 5 :],
    ):
        with pytest.raises(TransportError) as exc:
            SignalFrame.decode(bad)
        assert exc.value.code == "signal-malformed"


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=64))
def test_signal_frame_decoder_raises_only_its_error(data: bytes) -> None:
    code = "signal-malformed"
    try:
        SignalFrame.decode(data)
    except TransportError as exc:
        code = exc.code
    assert code == "signal-malformed"


# ---------------------------------------------------------------- against a real server


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, list[Paired]]]:
    server = start_server(tmp_path_factory.mktemp("peering"))
    try:
        yield server, pair_devices(server, "pia", 3)
    finally:
        server.stop()


def _local(p: Paired) -> LocalIdentity:
    trust = identity.TrustAnchor.from_ca(p.result.account_ca, p.result.crl)
    return LocalIdentity(
        key=p.key, cert_der=identity.cert_to_der(p.result.device_cert), trust=lambda: trust
    )


class Dev:
    """A ServerPath for one paired device; what it answers is up to the test."""

    def __init__(self, server: ServerProcess, p: Paired) -> None:
        self.id = p.result.device_id
        self.local = _local(p)
        self.client = server.client(p.key, p.result)
        self.answer: Callable[[bytes], Awaitable[bytes]] = self._echo
        self.channels: asyncio.Queue[Any] = asyncio.Queue()
        self.tasks: set[asyncio.Task[None]] = set()
        self.presence = asyncio.Event()
        self.path = ServerPath(
            client=self.client,
            local=self.local,
            on_request=lambda data: self.answer(data),
            on_channel=self._on_channel,
            on_presence=lambda online: self.presence.set(),
        )

    async def _echo(self, data: bytes) -> bytes:
        return b"answer:" + data

    async def _on_channel(self, channel: RelayChannel) -> None:
        await self.channels.put(channel)

    async def wait_online(self, *peers: str) -> None:
        async with asyncio.timeout(20):
            while not all(self.path.reachable(p) for p in peers):
                self.presence.clear()
                await self.presence.wait()

    async def __aenter__(self) -> Dev:
        await self.path.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self.tasks:
            task.cancel()
        await self.path.close()
        await self.client.close()


@pytest.mark.asyncio
async def test_requests_answers_and_refusals_through_the_server(
    world: tuple[ServerProcess, list[Paired]],
) -> None:
    server, (pa, pb, pc) = world
    async with Dev(server, pa) as a, Dev(server, pb) as b:
        await a.wait_online(b.id)
        loop = asyncio.get_running_loop()
        answers = await asyncio.gather(
            *(
                a.path.request(b.id, f"offer {i}".encode(), deadline=loop.time() + 10)
                for i in range(20)
            )
        )
        assert answers == [f"answer:offer {i}".encode() for i in range(20)]

        async def refuse(data: bytes) -> bytes:
            raise HandoffError("no", code="cert-revoked")

        b.answer = refuse
        with pytest.raises(PeerRefusedError) as refused:
            await a.path.request(b.id, b"offer", deadline=loop.time() + 10)
        assert refused.value.peer_code == "cert-revoked"

        async def silent(data: bytes) -> bytes:
            await asyncio.sleep(30)
            return b""

        b.answer = silent
        with pytest.raises(TransportError) as late:
            await a.path.request(b.id, b"offer", deadline=loop.time() + 0.5)
        assert late.value.code == "signaling-timeout"

        # A device that is not online: refused at once, nothing sent.
        with pytest.raises(TransportError) as offline:
            await a.path.request(pc.result.device_id, b"offer", deadline=loop.time() + 10)
        assert offline.value.code == "server-offline"


@pytest.mark.asyncio
async def test_only_the_addressed_device_answers_a_request(
    world: tuple[ServerProcess, list[Paired]], caplog: pytest.LogCaptureFixture
) -> None:
    """Another device of the account that learns a request's reference cannot answer it
    (a forged refusal from it would otherwise end the request): only the peer's answer counts."""
    server, (pa, pb, pc) = world
    async with Dev(server, pa) as a, Dev(server, pb) as b, Dev(server, pc) as c:
        await a.wait_online(b.id, c.id)
        await c.wait_online(a.id)
        entered, release = asyncio.Event(), asyncio.Event()

        async def slow(data: bytes) -> bytes:
            entered.set()
            await release.wait()
            return b"answer:" + data

        b.answer = slow
        loop = asyncio.get_running_loop()
        request = asyncio.create_task(a.path.request(b.id, b"offer", deadline=loop.time() + 30))
        await asyncio.wait_for(entered.wait(), 10)
        (ref,) = list(a.path._pending)  # the test peeks at the reference c would have to guess
        forged = SignalFrame.error(ref, "cert-revoked", "forged by another device")
        await c.path.link.send_signal(a.id, forged.encode())
        for _ in range(200):  # until a has handled c's frame: dropped (now) or taken (before)
            if request.done() or "unexpected answer through the server" in caplog.text:
                break
            await asyncio.sleep(0.05)
        release.set()
        assert await request == b"answer:offer"


@pytest.mark.asyncio
async def test_webrtc_signaled_through_the_server(
    world: tuple[ServerProcess, list[Paired]],
) -> None:
    server, (pa, pb, _) = world
    async with Dev(server, pa) as a, Dev(server, pb) as b:
        await a.wait_online(b.id)

        async def accept(data: bytes) -> bytes:
            accepted = await webrtc.accept(local=b.local, offer_envelope=data, options=LOOPBACK)

            async def opened() -> None:
                await b.channels.put(await accepted.channel())

            task = asyncio.create_task(opened())
            b.tasks.add(task)
            return accepted.answer

        b.answer = accept

        async def options(route: str) -> webrtc.WebRtcOptions:
            assert route == "server"  # no LAN address: only the server route is tried
            return LOOPBACK

        dialer = DirectDialer(lambda: a.local, lambda peer: (), lambda: a.path, options)
        assert dialer.plausible(b.id)
        loop = asyncio.get_running_loop()
        channel = await dialer.dial(b.id, deadline=loop.time() + 20)
        theirs = await asyncio.wait_for(b.channels.get(), 20)
        try:
            assert channel.peer.device_id == b.id
            assert theirs.peer.device_id == a.id
            await channel.send(b"hello over a server-signaled channel")
            assert (
                await asyncio.wait_for(theirs.recv(), 10) == b"hello over a server-signaled channel"
            )
        finally:
            await channel.close()
            await theirs.close()
        # The server refuses to forward to a device that is not online: no plausible direct path.
        assert not dialer.plausible(
            identity.device_id_for(identity.generate_device_key().public_key())
        )
