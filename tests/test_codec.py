"""The wire codec: every message round-trips; hostile bytes only ever raise ProtocolError."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handoffd.errors import Blame, ProtocolError
from handoffd.proto import codec, framing
from handoffd.proto import messages as m

# ---------------------------------------------------------------- strategies from the schema


def _strategy(t: Any) -> st.SearchStrategy[Any]:
    k = codec._Kind
    if t.kind == k.BOOL:
        return st.booleans()
    if t.kind == k.INT:
        return st.integers(codec.INT_MIN, codec.INT_MAX)
    if t.kind == k.STR:
        return st.text(max_size=min(t.limit, 40))
    if t.kind == k.BYTES:
        return st.binary(max_size=min(t.limit, 64))
    if t.kind == k.OPTIONAL:
        return st.none() | _strategy(t.inner)
    if t.kind == k.TUPLE:
        return st.lists(_strategy(t.inner), max_size=3).map(tuple)
    return _record_strategy(codec._RECORDS[t.record])


def _record_strategy(schema: Any) -> st.SearchStrategy[Any]:
    return st.builds(schema.cls, **{name: _strategy(t) for name, t in schema.fields})


ANY_MESSAGE = st.one_of([_record_strategy(s) for s in codec.MESSAGES.values()])


def test_every_message_type_is_covered() -> None:
    assert set(codec.MESSAGES) >= {
        "hello", "manifest", "offer", "accept", "decline", "data", "ack",
        "delivered", "resumed", "cancel", "error", "ping", "pong",
    }  # fmt: skip


@pytest.mark.parametrize("tag", sorted(codec.MESSAGES))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_roundtrip(tag: str, data: st.DataObject) -> None:
    msg = data.draw(_record_strategy(codec.MESSAGES[tag]))
    wire = codec.encode(msg)
    assert codec.decode(wire) == msg
    assert codec.encode(codec.decode(wire)) == wire


# ---------------------------------------------------------------- each error its code


def _code(data: bytes, **kw: Any) -> str:
    with pytest.raises(ProtocolError) as e:
        codec.decode(data, **kw)
    assert e.value.blame is Blame.PEER
    return e.value.code


def _raw(d: dict[str, Any]) -> bytes:
    return msgpack.packb(d, use_bin_type=True)


def test_each_rejection_has_its_code() -> None:
    ping = codec.encode(m.Ping(nonce=7))
    assert _code(ping, max_size=3) == "decode-oversize"
    assert _code(b"\xc1") == "decode-malformed"
    assert _code(ping[:-1]) == "decode-malformed"
    assert _code(ping + b"\x00") == "decode-trailing-bytes"
    assert _code(_raw([1, 2])) == "decode-not-a-message"  # type: ignore[arg-type]
    assert _code(_raw({"t": "nope"})) == "decode-unknown-type"
    assert _code(_raw({"t": "ping"})) == "decode-missing-field"
    assert _code(_raw({"nonce": 1, "t": "ping", "x": 1})) == "decode-extra-field"
    assert _code(_raw({"nonce": "1", "t": "ping"})) == "decode-wrong-type"
    assert _code(_raw({"nonce": True, "t": "ping"})) == "decode-wrong-type"
    assert _code(_raw({"nonce": 2**64 - 1, "t": "ping"})) == "decode-out-of-range"
    assert _code(_raw({"nonce": 1.0, "t": "ping"})) == "decode-wrong-type"
    assert _code(_raw({"t": "ping", "nonce": 1})) == "decode-non-canonical"
    # the same value in a wider encoding than needed: uint32 for 1
    wide = b"\x82\xa5nonce\xce\x00\x00\x00\x01\xa1t\xa4ping"
    assert _code(wide) == "decode-non-canonical"
    dup = b"\x83\xa5nonce\x01\xa5nonce\x02\xa1t\xa4ping"
    assert _code(dup) == "decode-duplicate-key"
    too_long = {"code": "x" * 65, "message": "", "t": "error"}
    assert _code(_raw(too_long)) == "decode-too-long"
    assert _code(msgpack.packb(msgpack.ExtType(1, b"x"))) == "decode-malformed"
    assert _code(b"\x91" * 5000 + b"\xc0") == "decode-malformed"  # deep nesting
    assert _code(b"\x81\xa1t\xa4ping\xff") == "decode-trailing-bytes"
    bad_utf8 = b"\x82\xa5nonce\x01\xa1t\xa4p\xffng"
    assert _code(bad_utf8) == "decode-malformed"


def test_encoder_refuses_invalid_messages() -> None:
    with pytest.raises(ProtocolError) as e:
        codec.encode(m.Data(handoff_id="h", index=0, offset=0, data=b"x" * (m.MAX_CHUNK + 1)))
    assert e.value.blame is Blame.LOCAL


def test_data_message_fits_in_64k() -> None:
    big = m.Data(handoff_id="H" * 64, index=2**40, offset=2**60, data=b"\xff" * m.MAX_CHUNK)
    assert len(codec.encode(big)) <= 64 * 1024


# ---------------------------------------------------------------- fuzz


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        codec.decode(data)


@settings(max_examples=3000, deadline=None)
@given(ANY_MESSAGE, st.data())
def test_mutated_messages_raise_only_protocol_errors(msg: Any, data: st.DataObject) -> None:
    wire = bytearray(codec.encode(msg))
    op = data.draw(st.sampled_from(["flip", "truncate", "insert", "splice"]))
    if op == "flip" and wire:
        i = data.draw(st.integers(0, len(wire) - 1))
        wire[i] ^= data.draw(st.integers(1, 255))
    elif op == "truncate":
        del wire[data.draw(st.integers(0, len(wire))) :]
    elif op == "insert":
        i = data.draw(st.integers(0, len(wire)))
        wire[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    else:
        other = codec.encode(data.draw(ANY_MESSAGE))
        i = data.draw(st.integers(0, len(wire)))
        j = data.draw(st.integers(0, len(other)))
        wire = wire[:i] + other[j:]
    try:
        out = codec.decode(bytes(wire))
    except ProtocolError:
        return
    assert codec.encode(out) == bytes(wire)  # anything accepted is canonical


# ---------------------------------------------------------------- framing


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=8), st.data())
def test_frames_survive_any_split(payloads: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(framing.encode_frame(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    dec = framing.FrameDecoder(max_frame=1024)
    out: list[bytes] = []
    last = 0
    for c in [*cuts, len(stream)]:
        out += dec.feed(stream[last:c])
        last = c
    dec.eof()
    assert out == payloads


def test_frame_truncated_and_oversize() -> None:
    dec = framing.FrameDecoder(max_frame=16)
    assert dec.feed(framing.encode_frame(b"abc")[:-1]) == []
    with pytest.raises(ProtocolError) as e:
        dec.eof()
    assert e.value.code == "frame-truncated"
    dec = framing.FrameDecoder(max_frame=16)
    with pytest.raises(ProtocolError) as e:
        dec.feed(b"\x00\x00\x00\x11")  # fails on the header, before any body arrives
    assert e.value.code == "frame-oversize"
    assert framing.FrameDecoder().feed(framing.encode_frame(b"")) == [b""]
    with pytest.raises(ProtocolError) as e:
        framing.encode_frame(b"x" * 17, max_frame=16)
    assert e.value.blame is Blame.LOCAL
