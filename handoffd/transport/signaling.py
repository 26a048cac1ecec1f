"""LAN signaling over TCP: one offer envelope in, one answer envelope (or an error) out.

Wire: each frame is a 4-byte big-endian length N (1 <= N <= MAX_FRAME), then N
bytes: a kind byte (1 offer, 2 answer, 3 error) and the body. An offer/answer
body is a signed envelope (``handoffd.envelope``), verified by the WebRTC
layer, not here; an error body is msgpack ``{"code": str, "message": str}``.
A connection carries exactly one exchange: the caller sends an offer, the
callee answers or sends an error, and closes. Anything else gets an error
frame and the connection closed; the server keeps serving.

The frame codec is local to this module (``handoffd.proto.framing`` did not
exist yet when it was written).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import struct
from collections.abc import Awaitable, Callable

import msgpack

from handoffd.errors import HandoffError, TransportError
from handoffd.transport.base import PeerRefusedError

log = logging.getLogger("handoffd.transport")

MAX_FRAME = 256 * 1024 + 1
KIND_OFFER = 1
KIND_ANSWER = 2
KIND_ERROR = 3
MAX_ERROR_MESSAGE = 200
READ_TIMEOUT = 10.0
ANSWER_TIMEOUT = 20.0
WRITE_TIMEOUT = 10.0
MAX_CONNECTIONS = 32
_HEADER = struct.Struct("!I")
_CODE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")

OnOffer = Callable[[bytes], Awaitable[bytes]]
"""Given an offer envelope, return the answer envelope or raise HandoffError (its code is sent)."""


class FrameError(TransportError):
    """A signaling frame broke the wire rules; ``code`` says how."""

    default_code = "signaling-protocol"


def encode_frame(kind: int, body: bytes) -> bytes:
    """One frame: length, kind, body."""
    if len(body) + 1 > MAX_FRAME:
        raise FrameError("signaling frame is too large", code="frame-too-large")
    return _HEADER.pack(len(body) + 1) + bytes([kind]) + body


def encode_error(code: str, message: str) -> bytes:
    """An error frame with a kebab-case code and a short printable message."""
    if not _CODE.fullmatch(code) or len(code) > 64:
        code = "error"
    message = "".join(c if c.isprintable() else "?" for c in message[:MAX_ERROR_MESSAGE])
    body = msgpack.packb({"code": code, "message": message}, use_bin_type=True)
    return encode_frame(KIND_ERROR, body)


def decode_error(body: bytes) -> tuple[str, str]:
    """Strictly decode an error body into (code, message)."""
    try:
        value = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            max_str_len=1024,
            max_bin_len=0,
            max_array_len=0,
            max_map_len=2,
            max_ext_len=0,
        )
    except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException) as exc:
        raise FrameError("error frame is not valid msgpack") from exc
    if not isinstance(value, dict) or set(value) != {"code", "message"}:
        raise FrameError("error frame has the wrong fields")
    code, message = value["code"], value["message"]
    if not isinstance(code, str) or not isinstance(message, str) or not _CODE.fullmatch(code):
        raise FrameError("error frame has a bad code or message")
    if len(code) > 64 or len(message) > MAX_ERROR_MESSAGE or not message.isprintable():
        raise FrameError("error frame has a bad code or message")
    return code, message


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Read one frame (bounded); raise FrameError, or IncompleteReadError at EOF."""
    (length,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if length == 0:
        raise FrameError("empty signaling frame", code="frame-malformed")
    if length > MAX_FRAME:
        raise FrameError("signaling frame is too large", code="frame-too-large")
    data = await reader.readexactly(length)
    kind = data[0]
    if kind not in (KIND_OFFER, KIND_ANSWER, KIND_ERROR):
        raise FrameError("unknown signaling frame kind", code="frame-malformed")
    return kind, data[1:]


async def _finish(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(TimeoutError, OSError):
        await asyncio.wait_for(writer.wait_closed(), WRITE_TIMEOUT)


class SignalingServer:
    """Answers WebRTC offers on a TCP port; one exchange per connection."""

    def __init__(
        self,
        host: str,
        port: int,
        on_offer: OnOffer,
        *,
        read_timeout: float = READ_TIMEOUT,
        answer_timeout: float = ANSWER_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self._host = host
        self._port = port
        self._on_offer = on_offer
        self._read_timeout = read_timeout
        self._answer_timeout = answer_timeout
        self._max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def port(self) -> int:
        """The bound port (after start; useful with port 0)."""
        if self._server is None or not self._server.sockets:
            raise TransportError("signaling server is not started", code="not-started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind and start serving."""
        if self._server is not None or self._closed:
            raise TransportError("signaling server already started", code="already-started")
        try:
            self._server = await asyncio.start_server(self._handle, self._host, self._port)
        except OSError as exc:
            raise TransportError(
                f"cannot listen on {self._host}:{self._port}: {exc.strerror}",
                code="signaling-bind-failed",
            ) from exc
        log.info("signaling listening", extra={"port": self.port})

    async def close(self) -> None:
        """Stop listening and end in-flight exchanges; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(list(self._handlers))
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - always a task under start_server
            writer.close()
            return
        self._handlers.add(task)
        try:
            if len(self._handlers) > self._max_connections:
                await self._send(writer, encode_error("busy", "too many signaling connections"))
                return
            frame = await self._exchange(reader)
            await self._send(writer, frame)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._handlers.discard(task)
            await _finish(writer)

    async def _exchange(self, reader: asyncio.StreamReader) -> bytes:
        """Read the offer and produce the reply frame (an answer or an error)."""
        try:
            kind, body = await asyncio.wait_for(read_frame(reader), self._read_timeout)
        except TimeoutError:
            return encode_error("timeout", "no offer received in time")
        except FrameError as exc:
            log.info("bad signaling frame: %s", exc.code)
            return encode_error(exc.code, exc.message)
        if kind != KIND_OFFER:
            return encode_error("unexpected-frame", "expected an offer")
        try:
            answer = await asyncio.wait_for(self._on_offer(body), self._answer_timeout)
        except TimeoutError:
            return encode_error("answer-timeout", "could not answer in time")
        except HandoffError as exc:
            log.info("offer refused: %s", exc.code)
            return encode_error(exc.code, exc.message)
        except Exception:  # one broken offer must not stop the server
            log.exception("offer handler failed")
            return encode_error("internal", "internal error")
        try:
            return encode_frame(KIND_ANSWER, answer)
        except FrameError:
            log.warning("answer is too large to send")
            return encode_error("answer-too-large", "answer is too large")

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, frame: bytes) -> None:
        writer.write(frame)
        try:
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
        except TimeoutError:
            log.info("signaling peer did not read its reply")


async def send_offer(
    host: str,
    port: int,
    envelope: bytes,
    *,
    timeout: float,  # noqa: ASYNC109 - one budget for the whole exchange
) -> bytes:
    """Send an offer envelope; return the answer envelope.

    Raises PeerRefusedError (the callee sent an error frame, ``peer_code``) or
    TransportError (signaling-unreachable, signaling-timeout, signaling-closed,
    signaling-protocol).
    """
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(encode_frame(KIND_OFFER, envelope))
                await writer.drain()
                kind, body = await read_frame(reader)
            finally:
                await _finish(writer)
    except TimeoutError:
        raise TransportError("no answer from the peer in time", code="signaling-timeout") from None
    except asyncio.IncompleteReadError:
        raise TransportError(
            "peer closed signaling without answering", code="signaling-closed"
        ) from None
    except OSError as exc:
        raise TransportError(
            f"cannot reach the peer's signaling port: {exc.strerror or exc}",
            code="signaling-unreachable",
        ) from exc
    if kind == KIND_ERROR:
        code, message = decode_error(body)
        raise PeerRefusedError(f"peer refused: {message}", peer_code=code)
    if kind != KIND_ANSWER:
        raise FrameError("expected an answer", code="signaling-protocol")
    return body


def lan_signal(
    resolve: Callable[[str], Awaitable[tuple[str, int]]],
) -> Callable[[str, bytes, float], Awaitable[bytes]]:
    """A ``WebRtcDialer`` signal function: ``resolve`` maps a device id to its signaling address."""

    async def signal(peer_device_id: str, offer: bytes, deadline: float) -> bytes:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline):
                host, port = await resolve(peer_device_id)
        except TimeoutError:
            raise TransportError(
                "peer address not found in time", code="signaling-timeout"
            ) from None
        return await send_offer(host, port, offer, timeout=max(0.0, deadline - loop.time()))

    return signal
