"""Stream framing: a 4-byte big-endian length, then that many bytes; fed incrementally."""

from __future__ import annotations

import struct

from handoffd.errors import Blame, ProtocolError

HEADER = struct.Struct(">I")
MAX_FRAME = 1024 * 1024


def encode_frame(payload: bytes, *, max_frame: int = MAX_FRAME) -> bytes:
    """The frame carrying ``payload``."""
    if len(payload) > max_frame:
        raise ProtocolError(
            f"frame of {len(payload)} bytes exceeds {max_frame}",
            code="frame-oversize",
            blame=Blame.LOCAL,
        )
    return HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Bytes in, whole frames out; memory stays within one frame plus one read."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._max = max_frame
        self._buf = bytearray()
        self._need: int | None = None

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return every frame now complete (an oversize length fails at once)."""
        self._buf += data
        frames: list[bytes] = []
        while True:
            if self._need is None:
                if len(self._buf) < HEADER.size:
                    return frames
                (length,) = HEADER.unpack_from(self._buf)
                if length > self._max:
                    raise ProtocolError(
                        f"frame length {length} exceeds {self._max}", code="frame-oversize"
                    )
                del self._buf[: HEADER.size]
                self._need = length
            if len(self._buf) < self._need:
                return frames
            frames.append(bytes(self._buf[: self._need]))
            del self._buf[: self._need]
            self._need = None

    @property
    def pending(self) -> int:
        """Bytes held that do not yet make a whole frame."""
        return len(self._buf) + (HEADER.size if self._need is not None else 0)

    def eof(self) -> None:
        """The stream ended; raise ProtocolError(frame-truncated) if a frame was cut short."""
        if self._buf or self._need is not None:
            raise ProtocolError("stream ended inside a frame", code="frame-truncated")
