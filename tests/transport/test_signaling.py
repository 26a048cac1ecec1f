"""LAN signaling over real TLS on TCP: one exchange per connection, hostile input, timeouts,
the server survives; nothing readable on the wire."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import AsyncIterator

import msgpack
import pytest
import pytest_asyncio
from cryptography import x509

from handoffd import envelope
from handoffd import identity as idn
from handoffd.errors import TransportError
from handoffd.transport import sigauth, webrtc
from handoffd.transport.base import LocalIdentity, PeerAuthError, PeerRefusedError
from handoffd.transport.signaling import (
    KIND_ANSWER,
    KIND_ERROR,
    KIND_HELLO,
    KIND_OFFER,
    KIND_PROOF,
    MAX_FRAME,
    FrameError,
    SignalingServer,
    client_context,
    decode_error,
    encode_error,
    encode_frame,
    read_frame,
    send_offer,
    server_context,
)
from tests.transport.helpers import Account, Device

pytestmark = pytest.mark.timeout(60)

ACCOUNT = Account()
CALLEE, CALLER = ACCOUNT.device(), ACCOUNT.device()


def _me() -> LocalIdentity:
    """The listener's identity in these tests."""
    return CALLEE.local


async def _offer(port: int, data: bytes, *, timeout: float) -> bytes:  # noqa: ASYNC109
    """``send_offer`` from CALLER to CALLEE on ``port``."""
    return await send_offer(
        "127.0.0.1", port, data, local=CALLER.local, peer_device_id=CALLEE.id, timeout=timeout
    )


class Handler:
    """An on_offer that answers ``answer:<offer>`` or misbehaves on request."""

    def __init__(self) -> None:
        self.calls = 0
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, offer: bytes) -> bytes:
        self.calls += 1
        self.entered.set()
        if offer == b"huge":
            return b"x" * MAX_FRAME
        if len(offer) > 1000:
            return b"big:%d" % len(offer)
        if offer == b"refuse":
            raise PeerAuthError("no", code="cert-revoked")
        if offer == b"crash":
            raise RuntimeError("bug")
        if offer == b"hang":
            await self.release.wait()
        return b"answer:" + offer


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[SignalingServer, Handler]]:
    handler = Handler()
    server = SignalingServer(
        "127.0.0.1", 0, handler, local=_me, read_timeout=1.0, answer_timeout=1.0
    )
    await server.start()
    try:
        yield server, handler
    finally:
        await server.close()
        await server.close()  # idempotent


async def _tls(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection to the signaling port, frames left to the caller."""
    return await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_context(), server_hostname=""
    )


async def _raw(port: int, data: bytes) -> tuple[int, bytes] | None:
    """Send raw bytes inside TLS; return the reply frame, or None if the server closed without one."""
    reader, writer = await _tls(port)
    try:
        writer.write(data)
        await writer.drain()
        try:
            return await asyncio.wait_for(read_frame(reader), 10)
        except asyncio.IncompleteReadError:
            return None
    finally:
        writer.close()
        await writer.wait_closed()


async def _still_serving(port: int) -> None:
    assert await _offer(port, b"ping", timeout=10) == b"answer:ping"


@pytest.mark.asyncio
async def test_offer_answer(served: tuple[SignalingServer, Handler]) -> None:
    server, handler = served
    assert await _offer(server.port, b"env", timeout=10) == b"answer:env"
    big = b"x" * (MAX_FRAME - 1)
    assert await _offer(server.port, big, timeout=10) == b"big:%d" % len(big)
    with pytest.raises(PeerRefusedError) as e:
        await _offer(server.port, b"huge", timeout=10)
    assert e.value.peer_code == "answer-too-large"
    assert handler.calls == 3


@pytest.mark.asyncio
async def test_refusal_carries_the_code(served: tuple[SignalingServer, Handler]) -> None:
    server, _ = served
    with pytest.raises(PeerRefusedError) as e:
        await _offer(server.port, b"refuse", timeout=10)
    assert e.value.code == "peer-refused"
    assert e.value.peer_code == "cert-revoked"
    await _still_serving(server.port)


@pytest.mark.asyncio
async def test_handler_bug_is_internal_and_server_survives(
    served: tuple[SignalingServer, Handler], caplog: pytest.LogCaptureFixture
) -> None:
    server, _ = served
    with pytest.raises(PeerRefusedError) as e:
        await _offer(server.port, b"crash", timeout=10)
    assert e.value.peer_code == "internal"
    assert "offer handler failed" in caplog.text
    await _still_serving(server.port)


@pytest.mark.asyncio
async def test_slow_handler_answer_timeout(served: tuple[SignalingServer, Handler]) -> None:
    server, _ = served
    with pytest.raises(PeerRefusedError) as e:
        await _offer(server.port, b"hang", timeout=10)
    assert e.value.peer_code == "answer-timeout"
    await _still_serving(server.port)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("data", "code"),
    [
        (struct.pack("!I", 0xFFFFFFFF) + b"junk", "frame-too-large"),
        (struct.pack("!I", MAX_FRAME + 1), "frame-too-large"),
        (struct.pack("!I", 0), "frame-malformed"),
        (struct.pack("!I", 3) + b"\x09ab", "frame-malformed"),
        (encode_frame(KIND_ANSWER, b"not an offer"), "unexpected-frame"),
        (encode_frame(KIND_ERROR, b"x"), "unexpected-frame"),
        (encode_frame(KIND_PROOF, b"x"), "unexpected-frame"),
        # A v1 caller's offer first: refused before it could be read.
        (encode_frame(KIND_OFFER, b"an offer"), "signaling-version"),
        (encode_frame(KIND_HELLO, b"\xc1"), "hello-malformed"),
        # Fuzz finding: a map with both text and binary keys escaped check_hello as TypeError
        # (no reply, a traceback in the log) from any stranger, before any authentication.
        (
            encode_frame(
                KIND_HELLO,
                msgpack.packb({"v": 2, b"nonce": bytes(32), "mac": bytes(32)}, use_bin_type=True),
            ),
            "hello-malformed",
        ),
    ],
)
async def test_garbage_gets_an_error_frame(
    served: tuple[SignalingServer, Handler], data: bytes, code: str
) -> None:
    server, handler = served
    reply = await _raw(server.port, data)
    assert reply is not None
    kind, body = reply
    assert kind == KIND_ERROR
    assert decode_error(body)[0] == code
    assert handler.calls == 0
    await _still_serving(server.port)


@pytest.mark.asyncio
async def test_silent_or_truncated_client(served: tuple[SignalingServer, Handler]) -> None:
    server, handler = served
    # Connects and sends nothing: the read timeout answers with an error frame.
    reply = await _raw(server.port, b"")
    assert reply is not None
    assert decode_error(reply[1])[0] == "timeout"
    # Half a frame then nothing: also a timeout, never a hang.
    reply = await _raw(server.port, struct.pack("!I", 100) + b"\x01abc")
    assert reply is not None
    assert decode_error(reply[1])[0] == "timeout"
    # Half a frame then the client closes (TLS has no half-close): just closed, no call.
    _, writer = await _tls(server.port)
    writer.write(struct.pack("!I", 100))
    await writer.drain()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    assert handler.calls == 0
    await _still_serving(server.port)


@pytest.mark.asyncio
async def test_plaintext_clients_get_nothing(
    served: tuple[SignalingServer, Handler], caplog: pytest.LogCaptureFixture
) -> None:
    server, handler = served
    caplog.set_level(logging.DEBUG)
    # The old cleartext protocol: an offer frame where a ClientHello belongs.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(encode_frame(KIND_OFFER, b"offer"))
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(), 10)
    assert not reply.startswith(b"\x00")  # no frame; at most a TLS alert record
    writer.close()
    await writer.wait_closed()
    # A liveness probe (handoffd.discovery.alive.tcp_probe): connect, close at once.
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.close()
    await writer.wait_closed()
    # Connects and never starts TLS: dropped after the handshake timeout (read_timeout, 1 s).
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    await writer.wait_closed()
    assert handler.calls == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    await _still_serving(server.port)


@pytest.mark.asyncio
async def test_busy_and_close_with_exchanges_in_flight() -> None:
    handler = Handler()
    server = SignalingServer(
        "127.0.0.1", 0, handler, local=_me, answer_timeout=60, max_connections=1
    )
    await server.start()
    port = server.port
    hanging = asyncio.create_task(_offer(port, b"hang", timeout=30))
    await asyncio.wait_for(handler.entered.wait(), 10)
    with pytest.raises(TransportError) as e:
        await _offer(port, b"second", timeout=10)
    # Sent before any proof: a refusal anyone could have sent, hence transient and generic.
    assert not isinstance(e.value, PeerRefusedError)
    assert e.value.code == "signaling-refused"
    await server.close()
    with pytest.raises(TransportError) as e2:
        await hanging
    assert e2.value.code == "signaling-closed"
    with pytest.raises(TransportError) as e2:
        await _offer(port, b"after", timeout=10)
    assert e2.value.code == "signaling-unreachable"
    with pytest.raises(TransportError) as e2:
        await server.start()
    assert e2.value.code == "already-started"


@pytest.mark.asyncio
async def test_client_errors() -> None:
    # Nothing listening.
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    with pytest.raises(TransportError) as e:
        await _offer(port, b"x", timeout=10)
    assert e.value.code == "signaling-unreachable"

    # Over TLS: a server that never answers; one that answers garbage; one with a bad error frame.
    replies = {
        "silent": None,
        "kind": encode_frame(KIND_OFFER, b"an offer back"),
        "error": encode_frame(KIND_ERROR, b"\xc1"),
        "code": encode_frame(
            KIND_ERROR, msgpack.packb({"code": "Not Kebab", "message": "x"}, use_bin_type=True)
        ),
    }
    expected = {
        "silent": "signaling-timeout",
        "kind": "signaling-protocol",
        "error": "signaling-protocol",
        "code": "signaling-protocol",
    }
    held: list[asyncio.StreamWriter] = []
    for name, reply in replies.items():

        async def serve(
            r: asyncio.StreamReader, w: asyncio.StreamWriter, reply: bytes | None = reply
        ) -> None:
            held.append(w)
            await read_frame(r)
            if reply is not None:
                w.write(reply)
                await w.drain()

        ctx = await asyncio.to_thread(server_context)
        srv = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ctx)
        try:
            with pytest.raises(TransportError) as e:
                await _offer(srv.sockets[0].getsockname()[1], b"o", timeout=1)
            assert e.value.code == expected[name], name
        finally:
            for w in held:
                w.close()
            held.clear()
            srv.close()
            await srv.wait_closed()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("behaviour", "code"),
    [
        ("cleartext", "signaling-tls"),  # the old protocol: an error frame, no TLS
        ("hang-up", "signaling-tls"),  # closes on the ClientHello
        ("mute", "signaling-timeout"),  # takes the ClientHello, never answers it
    ],
)
async def test_failed_or_slow_handshake(behaviour: str, code: str) -> None:
    held: list[asyncio.StreamWriter] = []

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)
        if behaviour == "cleartext":
            with contextlib.suppress(FrameError, asyncio.IncompleteReadError):
                await read_frame(r)
            w.write(encode_error("frame-too-large", "not a frame"))
            await w.drain()
            w.close()
        elif behaviour == "hang-up":
            await r.read(1)
            w.close()
        else:
            await r.read(1)

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TransportError) as e:
            await _offer(port, b"o", timeout=2)
        assert e.value.code == code
        assert loop.time() - started < 30  # bounded by the timeout, never a hang
    finally:
        for w in held:
            w.close()
        srv.close()
        await srv.wait_closed()


@pytest.mark.asyncio
async def test_bind_failure() -> None:
    first = SignalingServer("127.0.0.1", 0, Handler(), local=_me)
    await first.start()
    try:
        second = SignalingServer("127.0.0.1", first.port, Handler(), local=_me)
        with pytest.raises(TransportError) as e:
            await second.start()
        assert e.value.code == "signaling-bind-failed"
    finally:
        await first.close()
    with pytest.raises(TransportError) as e:
        _ = SignalingServer("127.0.0.1", 0, Handler(), local=_me).port
    assert e.value.code == "not-started"


def test_error_frame_codec() -> None:
    frame = encode_error("cert-revoked", "revoked\x1b[31m device")
    (length,) = struct.unpack("!I", frame[:4])
    assert length == len(frame) - 4
    assert frame[4] == KIND_ERROR
    code, message = decode_error(frame[5:])
    assert code == "cert-revoked"
    assert message.isprintable()
    assert "\x1b" not in message
    assert decode_error(encode_error("Bad Code!", "m")[5:])[0] == "error"
    assert len(decode_error(encode_error("x", "m" * 10_000)[5:])[1]) == 200
    with pytest.raises(FrameError):
        decode_error(msgpack.packb({"code": "a"}, use_bin_type=True))
    with pytest.raises(FrameError):
        decode_error(msgpack.packb({"code": "a", "message": "\x00"}, use_bin_type=True))
    with pytest.raises(FrameError) as e:
        encode_frame(KIND_OFFER, b"x" * MAX_FRAME)
    assert e.value.code == "frame-too-large"


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
        server = SignalingServer("127.0.0.1", 0, Handler(), local=_me)
        await server.start()
        try:
            reader, writer = await _tls(server.port)
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
