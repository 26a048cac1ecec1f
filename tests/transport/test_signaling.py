"""LAN signaling over real TCP: one exchange per connection, hostile input, timeouts, the server survives."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import msgpack
import pytest
import pytest_asyncio

from handoffd.errors import TransportError
from handoffd.transport.base import PeerAuthError, PeerRefusedError
from handoffd.transport.signaling import (
    KIND_ANSWER,
    KIND_ERROR,
    KIND_OFFER,
    MAX_FRAME,
    FrameError,
    SignalingServer,
    decode_error,
    encode_error,
    encode_frame,
    read_frame,
    send_offer,
)

pytestmark = pytest.mark.timeout(60)


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
    server = SignalingServer("127.0.0.1", 0, handler, read_timeout=1.0, answer_timeout=1.0)
    await server.start()
    try:
        yield server, handler
    finally:
        await server.close()
        await server.close()  # idempotent


async def _raw(port: int, data: bytes) -> tuple[int, bytes] | None:
    """Send raw bytes; return the reply frame, or None if the server closed without one."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
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
    assert await send_offer("127.0.0.1", port, b"ping", timeout=10) == b"answer:ping"


@pytest.mark.asyncio
async def test_offer_answer(served: tuple[SignalingServer, Handler]) -> None:
    server, handler = served
    assert await send_offer("127.0.0.1", server.port, b"env", timeout=10) == b"answer:env"
    big = b"x" * (MAX_FRAME - 1)
    assert await send_offer("127.0.0.1", server.port, big, timeout=10) == b"big:%d" % len(big)
    with pytest.raises(PeerRefusedError) as e:
        await send_offer("127.0.0.1", server.port, b"huge", timeout=10)
    assert e.value.peer_code == "answer-too-large"
    assert handler.calls == 3


@pytest.mark.asyncio
async def test_refusal_carries_the_code(served: tuple[SignalingServer, Handler]) -> None:
    server, _ = served
    with pytest.raises(PeerRefusedError) as e:
        await send_offer("127.0.0.1", server.port, b"refuse", timeout=10)
    assert e.value.code == "peer-refused"
    assert e.value.peer_code == "cert-revoked"
    await _still_serving(server.port)


@pytest.mark.asyncio
async def test_handler_bug_is_internal_and_server_survives(
    served: tuple[SignalingServer, Handler], caplog: pytest.LogCaptureFixture
) -> None:
    server, _ = served
    with pytest.raises(PeerRefusedError) as e:
        await send_offer("127.0.0.1", server.port, b"crash", timeout=10)
    assert e.value.peer_code == "internal"
    assert "offer handler failed" in caplog.text
    await _still_serving(server.port)


@pytest.mark.asyncio
async def test_slow_handler_answer_timeout(served: tuple[SignalingServer, Handler]) -> None:
    server, _ = served
    with pytest.raises(PeerRefusedError) as e:
        await send_offer("127.0.0.1", server.port, b"hang", timeout=10)
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
    # Half a frame then EOF: just closed.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(struct.pack("!I", 100))
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    await writer.wait_closed()
    assert handler.calls == 0
    await _still_serving(server.port)


@pytest.mark.asyncio
async def test_busy_and_close_with_exchanges_in_flight() -> None:
    handler = Handler()
    server = SignalingServer("127.0.0.1", 0, handler, answer_timeout=60, max_connections=1)
    await server.start()
    port = server.port
    hanging = asyncio.create_task(send_offer("127.0.0.1", port, b"hang", timeout=30))
    await asyncio.wait_for(handler.entered.wait(), 10)
    with pytest.raises(PeerRefusedError) as e:
        await send_offer("127.0.0.1", port, b"second", timeout=10)
    assert e.value.peer_code == "busy"
    await server.close()
    with pytest.raises(TransportError) as e2:
        await hanging
    assert e2.value.code == "signaling-closed"
    with pytest.raises(TransportError) as e2:
        await send_offer("127.0.0.1", port, b"after", timeout=10)
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
        await send_offer("127.0.0.1", port, b"x", timeout=10)
    assert e.value.code == "signaling-unreachable"

    # A server that never answers; one that answers garbage; one with a bad error frame.
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

        srv = await asyncio.start_server(serve, "127.0.0.1", 0)
        try:
            with pytest.raises(TransportError) as e:
                await send_offer("127.0.0.1", srv.sockets[0].getsockname()[1], b"o", timeout=1)
            assert e.value.code == expected[name], name
        finally:
            for w in held:
                w.close()
            held.clear()
            srv.close()
            await srv.wait_closed()


@pytest.mark.asyncio
async def test_bind_failure() -> None:
    first = SignalingServer("127.0.0.1", 0, Handler())
    await first.start()
    try:
        second = SignalingServer("127.0.0.1", first.port, Handler())
        with pytest.raises(TransportError) as e:
            await second.start()
        assert e.value.code == "signaling-bind-failed"
    finally:
        await first.close()
    with pytest.raises(TransportError) as e:
        _ = SignalingServer("127.0.0.1", 0, Handler()).port
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
