"""Length-prefixed framing: any split of the stream, truncation, oversize, empty frames."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handoffd.errors import Blame, ProtocolError
from handoffd.proto import framing


def _feed_in_pieces(dec: framing.FrameDecoder, stream: bytes, cuts: list[int]) -> list[bytes]:
    out: list[bytes] = []
    last = 0
    for c in [*sorted(cuts), len(stream)]:
        out += dec.feed(stream[last:c])
        last = c
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8), st.data())
def test_frames_survive_any_split(payloads: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(framing.encode_frame(p) for p in payloads)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    dec = framing.FrameDecoder(max_frame=300)
    assert _feed_in_pieces(dec, stream, cuts) == payloads
    assert dec.pending == 0
    dec.eof()


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=100), st.data())
def test_byte_at_a_time_and_truncation_anywhere(payload: bytes, data: st.DataObject) -> None:
    frame = framing.encode_frame(payload)
    dec = framing.FrameDecoder()
    out = [f for b in frame for f in dec.feed(bytes([b]))]
    assert out == [payload]
    cut = data.draw(st.integers(1, len(frame) - 1))
    dec = framing.FrameDecoder()
    assert dec.feed(frame[:cut]) == []
    assert dec.pending == cut
    with pytest.raises(ProtocolError) as e:
        dec.eof()
    assert e.value.code == "frame-truncated"
    assert e.value.blame is Blame.PEER


def test_header_layout_and_empty_frames() -> None:
    assert framing.encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert framing.encode_frame(b"") == b"\x00\x00\x00\x00"
    dec = framing.FrameDecoder()
    assert dec.feed(b"\x00\x00\x00\x00" * 3 + b"\x00\x00\x00\x01x") == [b"", b"", b"", b"x"]
    assert dec.feed(b"") == []
    dec.eof()


def test_oversize_length_fails_at_the_header() -> None:
    dec = framing.FrameDecoder(max_frame=16)
    assert dec.feed(framing.encode_frame(b"x" * 16)) == [b"x" * 16]
    assert dec.feed(b"\x00\x00") == []
    with pytest.raises(ProtocolError) as e:
        dec.feed(b"\x00\x11")  # 17: refused before any of the body arrives
    assert e.value.code == "frame-oversize"
    assert e.value.blame is Blame.PEER
    with pytest.raises(ProtocolError):  # the stream stays broken
        dec.feed(b"")
    with pytest.raises(ProtocolError):
        dec.eof()
    huge = framing.FrameDecoder()
    with pytest.raises(ProtocolError) as e:
        huge.feed(b"\xff\xff\xff\xff")
    assert e.value.code == "frame-oversize"


def test_memory_stays_within_one_frame() -> None:
    dec = framing.FrameDecoder(max_frame=1000)
    frame = framing.encode_frame(b"y" * 1000)
    for _ in range(50):
        for i in range(0, len(frame), 7):
            dec.feed(frame[i : i + 7])
            assert dec.pending <= 1004


def test_encoder_refuses_oversize_locally() -> None:
    with pytest.raises(ProtocolError) as e:
        framing.encode_frame(b"x" * 17, max_frame=16)
    assert e.value.code == "frame-oversize"
    assert e.value.blame is Blame.LOCAL
    with pytest.raises(ValueError, match="max_frame"):
        framing.FrameDecoder(max_frame=-1)
