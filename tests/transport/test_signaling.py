"""LAN signaling over real TLS on TCP: one exchange per connection, hostile input, timeouts,
the server survives; nothing readable on the wire."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import AsyncIterator

import msgpack
import pytest
import pytest_asyncio

from handoffd.errors import TransportError
from handoffd.transport.base import PeerRefusedError
from handoffd.transport.signaling import (
    KIND_ANSWER,
    KIND_ERROR,
    KIND_HELLO,
    KIND_OFFER,
    KIND_PROOF,
    MAX_FRAME,
    FrameError,
    SignalingServer,
    decode_error,
    encode_error,
    encode_frame,
    read_frame,
    server_context,
)
from tests.transport.sigkit import (
    Handler,
    me,
    offer,
    raw,
    still_serving,
    tls_connect,
)

pytestmark = pytest.mark.timeout(60)


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[SignalingServer, Handler]]:
    handler = Handler()
    server = SignalingServer(
        "127.0.0.1", 0, handler, local=me, read_timeout=1.0, answer_timeout=1.0
    )
    await server.start()
    try:
        yield server, handler
    finally:
        await server.close()
        await server.close()  # idempotent


@pytest.mark.asyncio
async def test_offer_answer(served: tuple[SignalingServer, Handler]) -> None:
    server, handler = served
    assert await offer(server.port, b"env", timeout=10) == b"answer:env"
    big = b"x" * (MAX_FRAME - 1)
    assert await offer(server.port, big, timeout=10) == b"big:%d" % len(big)
    with pytest.raises(PeerRefusedError) as e:
        await offer(server.port, b"huge", timeout=10)
    assert e.value.peer_code == "answer-too-large"
    assert handler.calls == 3


@pytest.mark.asyncio
async def test_refusal_carries_the_code(served: tuple[SignalingServer, Handler]) -> None:
    server, _ = served
    with pytest.raises(PeerRefusedError) as e:
        await offer(server.port, b"refuse", timeout=10)
    assert e.value.code == "peer-refused"
    assert e.value.peer_code == "cert-revoked"
    await still_serving(server.port)


@pytest.mark.asyncio
async def test_handler_bug_is_internal_and_server_survives(
    served: tuple[SignalingServer, Handler], caplog: pytest.LogCaptureFixture
) -> None:
    server, _ = served
    with pytest.raises(PeerRefusedError) as e:
        await offer(server.port, b"crash", timeout=10)
    assert e.value.peer_code == "internal"
    assert "offer handler failed" in caplog.text
    await still_serving(server.port)


@pytest.mark.asyncio
async def test_slow_handler_answer_timeout(served: tuple[SignalingServer, Handler]) -> None:
    server, _ = served
    with pytest.raises(PeerRefusedError) as e:
        await offer(server.port, b"hang", timeout=10)
    assert e.value.peer_code == "answer-timeout"
    await still_serving(server.port)


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
    reply = await raw(server.port, data)
    assert reply is not None
    kind, body = reply
    assert kind == KIND_ERROR
    assert decode_error(body)[0] == code
    assert handler.calls == 0
    await still_serving(server.port)


@pytest.mark.asyncio
async def test_silent_or_truncated_client(served: tuple[SignalingServer, Handler]) -> None:
    server, handler = served
    # Connects and sends nothing: the read timeout answers with an error frame.
    reply = await raw(server.port, b"")
    assert reply is not None
    assert decode_error(reply[1])[0] == "timeout"
    # Half a frame then nothing: also a timeout, never a hang.
    reply = await raw(server.port, struct.pack("!I", 100) + b"\x01abc")
    assert reply is not None
    assert decode_error(reply[1])[0] == "timeout"
    # Half a frame then the client closes (TLS has no half-close): just closed, no call.
    _, writer = await tls_connect(server.port)
    writer.write(struct.pack("!I", 100))
    await writer.drain()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    assert handler.calls == 0
    await still_serving(server.port)


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
    await still_serving(server.port)


@pytest.mark.asyncio
async def test_busy_and_close_with_exchanges_in_flight() -> None:
    handler = Handler()
    server = SignalingServer(
        "127.0.0.1", 0, handler, local=me, answer_timeout=60, max_connections=1
    )
    await server.start()
    port = server.port
    hanging = asyncio.create_task(offer(port, b"hang", timeout=30))
    await asyncio.wait_for(handler.entered.wait(), 10)
    with pytest.raises(TransportError) as e:
        await offer(port, b"second", timeout=10)
    # Sent before any proof: a refusal anyone could have sent, hence transient and generic.
    assert not isinstance(e.value, PeerRefusedError)
    assert e.value.code == "signaling-refused"
    await server.close()
    with pytest.raises(TransportError) as e2:
        await hanging
    assert e2.value.code == "signaling-closed"
    with pytest.raises(TransportError) as e2:
        await offer(port, b"after", timeout=10)
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
        await offer(port, b"x", timeout=10)
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
                await offer(srv.sockets[0].getsockname()[1], b"o", timeout=1)
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
            await offer(port, b"o", timeout=2)
        assert e.value.code == code
        assert loop.time() - started < 30  # bounded by the timeout, never a hang
    finally:
        for w in held:
            w.close()
        srv.close()
        await srv.wait_closed()


@pytest.mark.asyncio
async def test_bind_failure() -> None:
    first = SignalingServer("127.0.0.1", 0, Handler(), local=me)
    await first.start()
    try:
        second = SignalingServer("127.0.0.1", first.port, Handler(), local=me)
        with pytest.raises(TransportError) as e:
            await second.start()
        assert e.value.code == "signaling-bind-failed"
    finally:
        await first.close()
    with pytest.raises(TransportError) as e:
        _ = SignalingServer("127.0.0.1", 0, Handler(), local=me).port
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
