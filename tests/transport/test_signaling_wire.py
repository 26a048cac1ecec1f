"""LAN signaling on the wire: TLS 1.3 with an ephemeral certificate per start, and nothing
that names a device or an account readable by a passive observer."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from cryptography import x509

from handoffd import envelope
from handoffd import identity as idn
from handoffd.transport import sigauth, webrtc
from handoffd.transport.signaling import (
    KIND_ANSWER,
    KIND_HELLO,
    KIND_OFFER,
    KIND_PROOF,
    SignalingServer,
    encode_frame,
    read_frame,
    send_offer,
)
from tests.transport.helpers import Account, Device
from tests.transport.sigkit import (
    ACCOUNT,
    Handler,
    me,
    tls_connect,
)

pytestmark = pytest.mark.timeout(60)


class Tap:
    """A TCP proxy in front of a port that keeps every byte it forwards, both ways."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.wire = bytearray()
        self.server: asyncio.Server | None = None
        self.pipes: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._pipe, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.pipes:  # wait_closed does not wait for the connections' tasks
            task.cancel()
        await asyncio.gather(*self.pipes, return_exceptions=True)
        await self.server.wait_closed()

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.pipes.add(task)
        ur, uw = await asyncio.open_connection("127.0.0.1", self.target)

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    self.wire += data
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(copy(r, uw), copy(ur, w))


@pytest.mark.asyncio
async def test_a_passive_observer_learns_no_identity() -> None:
    account = Account()
    caller, callee = account.device(), account.device()

    def seal(device: Device, to: str, purpose: str) -> bytes:
        return envelope.seal(
            device.key,
            device.local.cert_der,
            purpose=purpose,
            recipient=to,
            payload=b"v=0 sdp",
            now=time.time(),
        )

    answer = seal(callee, caller.id, webrtc.PURPOSE_ANSWER)
    offers: list[bytes] = []

    async def on_offer(offer: bytes) -> bytes:
        offers.append(offer)
        return answer

    offer = seal(caller, callee.id, webrtc.PURPOSE_OFFER)
    secrets_on_the_wire = {
        "caller certificate": caller.local.cert_der,
        "callee certificate": callee.local.cert_der,
        "caller id": caller.id.encode(),
        "callee id": callee.id.encode(),
        "account id": idn.ca_account_id(account.ca.cert).encode(),
        "caller key": caller.key.public_key().public_bytes_raw(),
    }
    # In the clear they would all be there: the envelopes carry them.
    for name, value in secrets_on_the_wire.items():
        assert value in offer + answer, name

    server = SignalingServer("127.0.0.1", 0, on_offer, local=lambda: callee.local)
    await server.start()
    try:
        tap = Tap(server.port)
        async with tap as port:
            got = await send_offer(
                "127.0.0.1", port, offer, local=caller.local, peer_device_id=callee.id, timeout=10
            )
            assert got == answer
        assert offers == [offer]
    finally:
        await server.close()
    wire = bytes(tap.wire)
    assert len(wire) > len(offer) + len(answer)  # both envelopes crossed, wrapped
    assert wire[:3] == b"\x16\x03\x01"  # a TLS handshake record opens the connection
    for name, value in secrets_on_the_wire.items():
        assert value not in wire, name
    assert b"handoff" not in wire


@pytest.mark.asyncio
async def test_tls13_with_an_ephemeral_certificate_per_start() -> None:
    seen: list[bytes] = []
    for _ in range(2):
        server = SignalingServer("127.0.0.1", 0, Handler(), local=me)
        await server.start()
        try:
            reader, writer = await tls_connect(server.port)
            tls = writer.get_extra_info("ssl_object")
            assert tls.version() == "TLSv1.3"
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            seen.append(der)
            hello, _ = sigauth.make_hello(ACCOUNT.trust, der)
            writer.write(encode_frame(KIND_HELLO, hello))
            kind, _proof = await asyncio.wait_for(read_frame(reader), 10)
            assert kind == KIND_PROOF
            writer.write(encode_frame(KIND_OFFER, b"x"))
            assert await asyncio.wait_for(read_frame(reader), 10) == (KIND_ANSWER, b"answer:x")
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        finally:
            await server.close()
    assert seen[0] != seen[1]
    cert = x509.load_der_x509_certificate(seen[0])
    assert cert.subject == cert.issuer  # self-signed, naming nothing but its purpose
    assert cert.subject.rfc4514_string() == "CN=handoff-signaling"
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
