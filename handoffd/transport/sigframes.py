"""LAN signaling frames (shared with signals relayed through the server): strict and bounded.

A frame is a ``handoffd.proto.framing`` frame (a 4-byte big-endian length N,
1 <= N <= MAX_FRAME, then N bytes) whose payload is a kind byte (1 offer, 2 answer, 3 error, 4 hello, 5 proof) and the body. An
error body is msgpack ``{"code": <kebab-case <= 64>, "message": <printable <= 200>}``.
"""

from __future__ import annotations

import re
from typing import Protocol

import msgpack

from handoffd.errors import TransportError
from handoffd.proto import framing, strict

MAX_FRAME = 256 * 1024 + 1
KIND_OFFER = 1
KIND_ANSWER = 2
KIND_ERROR = 3
KIND_HELLO = 4
KIND_PROOF = 5
_KINDS = (KIND_OFFER, KIND_ANSWER, KIND_ERROR, KIND_HELLO, KIND_PROOF)
MAX_ERROR_MESSAGE = 200
_CODE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


class ByteReader(Protocol):
    """What ``read_frame`` reads from (``asyncio.StreamReader`` is one); keeps this module pure."""

    async def readexactly(self, n: int, /) -> bytes:
        """Exactly ``n`` bytes, or IncompleteReadError at EOF."""
        ...


class FrameError(TransportError):
    """A signaling frame broke the wire rules; ``code`` says how."""

    default_code = "signaling-protocol"


def encode_frame(kind: int, body: bytes) -> bytes:
    """One frame: length, kind, body."""
    if len(body) + 1 > MAX_FRAME:
        raise FrameError("signaling frame is too large", code="frame-too-large")
    return framing.encode_frame(bytes([kind]) + body, max_frame=MAX_FRAME)


def decode_frame(data: bytes) -> tuple[int, bytes]:
    """One whole buffered frame as (kind, body); FrameError if its length or kind is wrong."""
    size = framing.HEADER.size
    if len(data) < size + 1:
        raise FrameError("signaling frame is too short", code="frame-malformed")
    (length,) = framing.HEADER.unpack_from(data)
    if length != len(data) - size or length > MAX_FRAME:
        raise FrameError("signaling frame has a bad length", code="frame-malformed")
    if data[size] not in _KINDS:
        raise FrameError("unknown signaling frame kind", code="frame-malformed")
    return data[size], data[size + 1 :]


def error_body(code: str, message: str) -> bytes:
    """The body of an error frame (``encode_error`` without the frame around it)."""
    if not _CODE.fullmatch(code) or len(code) > 64:
        code = "error"
    message = "".join(c if c.isprintable() else "?" for c in message[:MAX_ERROR_MESSAGE])
    return msgpack.packb({"code": code, "message": message}, use_bin_type=True)


def encode_error(code: str, message: str) -> bytes:
    """An error frame with a kebab-case code and a short printable message."""
    return encode_frame(KIND_ERROR, error_body(code, message))


def decode_error(body: bytes) -> tuple[str, str]:
    """Strictly decode an error body into (code, message)."""
    try:
        value = strict.unpack(body, max_str=1024, max_bin=0, max_array=0, max_map=2)
    except strict.MsgpackError as exc:
        raise FrameError("error frame is not valid msgpack") from exc
    if not isinstance(value, dict) or set(value) != {"code", "message"}:
        raise FrameError("error frame has the wrong fields")
    code, message = value["code"], value["message"]
    if not isinstance(code, str) or not isinstance(message, str) or not _CODE.fullmatch(code):
        raise FrameError("error frame has a bad code or message")
    if len(code) > 64 or len(message) > MAX_ERROR_MESSAGE or not message.isprintable():
        raise FrameError("error frame has a bad code or message")
    return code, message


async def read_frame(reader: ByteReader) -> tuple[int, bytes]:
    """Read one frame (bounded); raise FrameError, or IncompleteReadError at EOF."""
    (length,) = framing.HEADER.unpack(await reader.readexactly(framing.HEADER.size))
    if length == 0:
        raise FrameError("empty signaling frame", code="frame-malformed")
    if length > MAX_FRAME:
        raise FrameError("signaling frame is too large", code="frame-too-large")
    data = await reader.readexactly(length)
    kind = data[0]
    if kind not in _KINDS:
        raise FrameError("unknown signaling frame kind", code="frame-malformed")
    return kind, data[1:]
