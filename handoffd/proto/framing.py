"""Stream framing: a 4-byte big-endian length N, then N payload bytes; decoded incrementally.

Errors are ``ProtocolError``: ``frame-oversize`` (a length over the limit: blame
peer when decoding, local when encoding) and ``frame-truncated`` (the stream
ended inside a frame, blame peer).
"""

from __future__ import annotations

import struct

from handoffd.errors import Blame, ProtocolError

HEADER = struct.Struct(">I")
MAX_FRAME = 1024 * 1024
"""Default largest payload of one frame."""


def _check_limit(max_frame: int) -> None:
    if not 0 <= max_frame <= 2**32 - 1:
        raise ValueError(f"max_frame must be within 0..2**32-1, not {max_frame}")


def encode_frame(payload: bytes, *, max_frame: int = MAX_FRAME) -> bytes:
    """The frame carrying ``payload``; ProtocolError(frame-oversize, local) if it is too long."""
    _check_limit(max_frame)
    if len(payload) > max_frame:
        raise ProtocolError(
            f"frame of {len(payload)} bytes exceeds {max_frame}",
            code="frame-oversize",
            blame=Blame.LOCAL,
        )
    return HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Bytes in, whole payloads out; holds at most one header and one partial payload.

    After a ProtocolError the stream is unusable: every later ``feed`` raises it again.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        _check_limit(max_frame)
        self._max = max_frame
        self._head = bytearray()
        self._body = bytearray()
        self._need: int | None = None
        self._error: ProtocolError | None = None

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; the payloads they complete, in order (an oversize length fails at once)."""
        if self._error is not None:
            raise self._error
        frames: list[bytes] = []
        view = memoryview(data).cast("B")
        pos = 0
        while True:
            if self._need is None:
                take = min(HEADER.size - len(self._head), len(view) - pos)
                self._head += view[pos : pos + take]
                pos += take
                if len(self._head) < HEADER.size:
                    return frames
                (length,) = HEADER.unpack(self._head)
                self._head.clear()
                if length > self._max:
                    self._error = ProtocolError(
                        f"frame length {length} exceeds {self._max}",
                        code="frame-oversize",
                        blame=Blame.PEER,
                    )
                    raise self._error
                self._need = length
            take = min(self._need - len(self._body), len(view) - pos)
            self._body += view[pos : pos + take]
            pos += take
            if len(self._body) < self._need:
                return frames
            frames.append(bytes(self._body))
            self._body.clear()
            self._need = None

    @property
    def pending(self) -> int:
        """Bytes held that do not yet make a whole frame."""
        return len(self._head) + len(self._body) + (HEADER.size if self._need is not None else 0)

    def eof(self) -> None:
        """The stream ended: ProtocolError(frame-truncated) if it ended inside a frame."""
        if self._error is not None:
            raise self._error
        if self._head or self._need is not None:
            raise ProtocolError(
                f"stream ended inside a frame ({self.pending} bytes pending)",
                code="frame-truncated",
                blame=Blame.PEER,
            )
