"""The wire codec: every message round-trips; hostile bytes only ever raise ProtocolError."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handoffd.errors import Blame, ProtocolError
from handoffd.proto import codec, schema
from handoffd.proto import messages as m
from handoffd.proto.schema import Max, Min, Range

# ---------------------------------------------------------------- strategies from the type hints


def _meta(hint: Any) -> tuple[Any, list[Any]]:
    meta: list[Any] = []
    while typing.get_origin(hint) is typing.Annotated:
        hint, *extra = typing.get_args(hint)
        meta += extra
    return hint, meta


def _bounds(meta: list[Any], hi: int) -> tuple[int, int]:
    lo = max([x.n for x in meta if isinstance(x, Min)], default=0)
    return lo, min([x.n for x in meta if isinstance(x, Max)], default=hi)


def strategy(hint: Any, meta: list[Any] | None = None) -> st.SearchStrategy[Any]:
    """Values of a field type, within its Annotated bounds (built from the hints alone)."""
    hint, more = _meta(hint)
    meta = [*(meta or []), *more]
    if hint is bool:
        return st.booleans()
    if hint is int:
        r = [x for x in meta if isinstance(x, Range)]
        lo, hi = (r[-1].lo, r[-1].hi) if r else (schema.INT_MIN, schema.INT_MAX)
        return st.integers(lo, hi) | st.sampled_from([lo, hi])
    if hint is str:
        lo, hi = _bounds(meta, schema.DEFAULT_MAX_STR)
        return st.text(min_size=lo, max_size=min(hi, lo + 12))
    if hint is bytes:
        lo, hi = _bounds(meta, schema.DEFAULT_MAX_BYTES)
        return st.binary(min_size=lo, max_size=min(hi, lo + 40))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return st.none() | strategy(inner, meta)
    if typing.get_origin(hint) is tuple:
        lo, hi = _bounds(meta, schema.DEFAULT_MAX_ITEMS)
        inner = strategy(typing.get_args(hint)[0])
        return st.lists(inner, min_size=lo, max_size=min(hi, lo + 3)).map(tuple)
    assert dataclasses.is_dataclass(hint), hint
    hints = typing.get_type_hints(hint, include_extras=True)
    cls: type[Any] = typing.cast("type[Any]", hint)
    return st.builds(cls, **{f.name: strategy(hints[f.name]) for f in dataclasses.fields(cls)})


def maximal(hint: Any, meta: list[Any] | None = None) -> Any:
    """The value of a field type with the longest encoding its bounds allow."""
    hint, more = _meta(hint)
    meta = [*(meta or []), *more]
    if hint is bool:
        return True
    if hint is int:
        r = [x for x in meta if isinstance(x, Range)]
        lo, hi = (r[-1].lo, r[-1].hi) if r else (schema.INT_MIN, schema.INT_MAX)
        return lo if -lo > hi else hi
    if hint is str:
        return "\U0010ffff" * _bounds(meta, schema.DEFAULT_MAX_STR)[1]  # 4 UTF-8 bytes each
    if hint is bytes:
        return b"\xff" * _bounds(meta, schema.DEFAULT_MAX_BYTES)[1]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return maximal(inner, meta)
    if typing.get_origin(hint) is tuple:
        n = _bounds(meta, schema.DEFAULT_MAX_ITEMS)[1]
        return (maximal(typing.get_args(hint)[0]),) * n
    hints = typing.get_type_hints(hint, include_extras=True)
    return hint(**{f.name: maximal(hints[f.name]) for f in dataclasses.fields(hint)})


ANY_MESSAGE = st.one_of([strategy(cls) for _, cls in sorted(codec.MESSAGES.items())])


def test_registry_and_message_union_agree() -> None:
    assert set(codec.MESSAGES.values()) == set(typing.get_args(m.Message))
    assert {codec.tag_of(maximal(cls)) for cls in codec.MESSAGES.values()} == set(codec.MESSAGES)


@pytest.mark.parametrize("tag", sorted(codec.MESSAGES))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_roundtrip(tag: str, data: st.DataObject) -> None:
    msg = data.draw(strategy(codec.MESSAGES[tag]))
    wire = codec.encode(msg)
    assert codec.decode(wire) == msg
    assert m.decode(wire) == msg
    assert codec.decode_as(wire, codec.MESSAGES[tag]) == msg
    assert codec.encode(codec.decode(wire)) == wire


@pytest.mark.parametrize("tag", sorted(codec.MESSAGES))
def test_the_largest_message_of_each_type_fits_its_carrier(tag: str) -> None:
    cls = codec.MESSAGES[tag]
    msg = maximal(cls)
    if cls is m.Manifest:
        return  # bounded by Offer.manifest, checked by the encoder of the offer
    wire = codec.encode(msg)
    assert codec.decode(wire) == msg
    limit = m.MAX_OFFER if cls in m.ENCLOSED else m.WIRE_MAX
    assert len(wire) <= limit, (tag, len(wire))


def test_canonical_form_is_sorted_keys_shortest_forms() -> None:
    wire = codec.encode(m.Ack(handoff_id="h", index=1, offset=300))
    assert wire == b"\x84\xaahandoff_id\xa1h\xa5index\x01\xa6offset\xcd\x01\x2c\xa1t\xa3ack"


# ---------------------------------------------------------------- each rejection, its code


def _code(data: bytes, **kw: Any) -> str:
    with pytest.raises(ProtocolError) as e:
        codec.decode(data, **kw)
    assert e.value.blame is Blame.PEER
    return e.value.code


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def _raw(value: Any, *, canonical_order: bool = True) -> bytes:
    return msgpack.packb(_sorted(value) if canonical_order else value, use_bin_type=True)


PING = codec.encode(m.Ping(nonce=7))
OFFER = {"cert": b"", "manifest": b"", "signature": b"s" * 64, "t": "offer"}


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (PING[:-1], "decode-malformed"),
        (b"", "decode-malformed"),
        (b"\xc1", "decode-malformed"),
        (b"\x82\xa5nonce\x01\xa1t\xa4p\xffng", "decode-malformed"),  # invalid UTF-8
        (PING + b"\x00", "decode-trailing-bytes"),
        (_raw(msgpack.ExtType(1, b"x")), "decode-ext-type"),
        (_raw(msgpack.ExtType(1, b"")), "decode-ext-type"),
        (_raw(msgpack.Timestamp(1, 0)), "decode-ext-type"),
        (b"\x91" * 5000 + b"\xc0", "decode-too-deep"),
        (b"\x91" * (codec.MAX_DEPTH + 1) + b"\xc0", "decode-too-deep"),
        (_raw({"nonce": 1, "t": "ping", "x": "y" * 5000}), "decode-too-long"),  # msgpack's bound
        (_raw({"nonce": 1, "t": "ping", "x": list(range(2000))}), "decode-too-long"),
        (_raw({"code": "x" * 65, "message": "", "t": "error"}), "decode-too-long"),  # the field's
        (_raw({**OFFER, "signature": b"s" * 63}), "decode-too-short"),
        (_raw({"data": b"", "handoff_id": "h", "index": 0, "offset": 0, "t": "data"}), "decode-too-short"),
        (b"\x83\xa5nonce\x01\xa5nonce\x02\xa1t\xa4ping", "decode-duplicate-key"),
        (_raw([1, 2]), "decode-not-a-message"),
        (_raw({"nonce": 1}), "decode-not-a-message"),
        (_raw({"t": b"ping", "nonce": 1}), "decode-not-a-message"),
        (_raw({"t": "nope"}), "decode-unknown-type"),
        (_raw({"t": "ping"}), "decode-missing-field"),
        (_raw({"nonce": 1, "t": "ping", "x": 1}), "decode-extra-field"),
        (_raw({"nonce": "1", "t": "ping"}), "decode-wrong-type"),
        (_raw({"nonce": True, "t": "ping"}), "decode-wrong-type"),  # bool is not int
        (_raw({"nonce": 1.0, "t": "ping"}), "decode-wrong-type"),
        (_raw({"nonce": float("nan"), "t": "ping"}), "decode-wrong-type"),
        (_raw({"nonce": None, "t": "ping"}), "decode-wrong-type"),
        (_raw({**OFFER, "cert": "text"}), "decode-wrong-type"),  # str is not bytes
        (_raw({"code": b"x", "message": "", "t": "error"}), "decode-wrong-type"),  # nor bytes str
        (_raw({"nonce": 1, "t": "ping", 1: 2}), "decode-wrong-type"),  # a non-string key
        (_raw({"nonce": 1, "t": "ping", b"k": 2}), "decode-wrong-type"),
        (_raw({"handoff_id": "h", "items": {}, "t": "accept", "window": m.MIN_WINDOW}), "decode-wrong-type"),
        (_raw({"handoff_id": "h", "items": [[0, 0]], "t": "accept", "window": m.MIN_WINDOW}), "decode-wrong-type"),
        (_raw({"nonce": -1, "t": "ping"}), "decode-out-of-range"),
        (_raw({"handoff_id": "h", "index": 0, "offset": -1, "t": "ack"}), "decode-out-of-range"),
        (_raw({"handoff_id": "h", "index": 1024, "offset": 0, "t": "ack"}), "decode-out-of-range"),
        (_raw({"t": "ping", "nonce": 1}, canonical_order=False), "decode-non-canonical"),  # key order
        (b"\x82\xa5nonce\xce\x00\x00\x00\x01\xa1t\xa4ping", "decode-non-canonical"),  # wide int
        (b"\x82\xa5nonce\x01\xa1t\xd9\x04ping", "decode-non-canonical"),  # str8 for 4 bytes
    ],
)  # fmt: skip
def test_each_rejection_has_its_code(data: bytes, code: str) -> None:
    assert _code(data) == code


def test_oversize_is_refused_before_parsing() -> None:
    assert _code(PING, max_size=len(PING) - 1) == "decode-oversize"
    assert codec.decode(PING, max_size=len(PING)) == m.Ping(nonce=7)
    big = codec.encode(m.Data(handoff_id="h", index=0, offset=0, data=b"x" * 1000))
    assert _code(big, max_size=999) == "decode-oversize"
    assert _code(b"\xc1" * 10, max_size=5) == "decode-oversize"


def test_not_bytes_and_unexpected_type() -> None:
    assert _code("ping") == "decode-malformed"  # type: ignore[arg-type]
    with pytest.raises(ProtocolError) as e:
        codec.decode_as(PING, m.Pong)
    assert e.value.code == "decode-unexpected-type"
    assert e.value.blame is Blame.PEER


def test_nested_records_are_checked_too() -> None:
    good = {"index": 0, "offset": 0}
    base = {"handoff_id": "h", "t": "accept", "window": m.MIN_WINDOW}
    assert isinstance(codec.decode(_raw({**base, "items": [good]})), m.Accept)
    assert _code(_raw({**base, "items": [{"index": 0}]})) == "decode-missing-field"
    assert _code(_raw({**base, "items": [{**good, "x": 1}]})) == "decode-extra-field"
    assert _code(_raw({**base, "items": [{**good, "t": "x"}]})) == "decode-extra-field"
    swapped = {
        "handoff_id": "h",
        "items": [{"offset": 0, "index": 0}],
        "t": "accept",
        "window": m.MIN_WINDOW,
    }
    assert _code(_raw(swapped, canonical_order=False)) == "decode-non-canonical"
    assert _code(_raw({**base, "items": []})) == "decode-too-short"


def test_encoder_refuses_what_a_peer_would() -> None:
    bad = [
        m.Data(handoff_id="h", index=0, offset=0, data=b"x" * (m.MAX_CHUNK + 1)),
        m.Data(handoff_id="h", index=0, offset=-1, data=b"x"),
        m.Ping(nonce=True),
        m.Ping(nonce=2**64),
        m.Error(code="c", message=b"m"),  # type: ignore[arg-type]
        m.Error(code="\ud800", message=""),  # a lone surrogate has no UTF-8 form
        m.Cancel(handoff_id="h", reason="r" * 65),
    ]
    for msg in bad:
        with pytest.raises(ProtocolError) as e:
            codec.encode(msg)
        assert e.value.code == "encode-invalid"
        assert e.value.blame is Blame.LOCAL
    with pytest.raises(TypeError):
        codec.encode(m.Resume(index=0, offset=0))  # a record, not a message


def test_schema_mistakes_fail_at_registration() -> None:
    @dataclass(slots=True)
    class NotFrozen:
        x: int

    @dataclass(frozen=True, slots=True)
    class Floaty:
        x: float

    @dataclass(frozen=True, slots=True)
    class Tagged:
        t: int

    @dataclass(frozen=True, slots=True)
    class Misbounded:
        x: Annotated[int, Max(3)]

    @dataclass(frozen=True, slots=True)
    class Union2:
        x: int | str

    for cls in (NotFrozen, Floaty, Tagged, Misbounded, Union2):
        with pytest.raises(TypeError):
            schema.message("test-never-registered")(cls)
    with pytest.raises(TypeError):
        schema.message("ping")(m.Pong)
    assert "test-never-registered" not in codec.MESSAGES


# ---------------------------------------------------------------- fuzz


def accepted_or_refused(data: bytes) -> None:
    """Decoding either returns a message whose encoding is ``data`` or raises a decode error."""
    try:
        out = codec.decode(data)
    except ProtocolError as exc:
        error = exc
    else:
        assert codec.encode(out) == data  # anything accepted is canonical
        return
    assert error.blame is Blame.PEER
    assert error.code.startswith("decode-")


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    accepted_or_refused(data)


MSGPACK_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=10)
    | st.sampled_from(sorted(codec.MESSAGES)),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.sampled_from(["t", "nonce", "handoff_id"]), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(MSGPACK_VALUES)
def test_well_formed_msgpack_of_any_shape_raises_only_protocol_errors(value: Any) -> None:
    accepted_or_refused(msgpack.packb(value, use_bin_type=True))


@settings(max_examples=2000, deadline=None)
@given(ANY_MESSAGE, st.data())
def test_mutated_messages_raise_only_protocol_errors(msg: Any, data: st.DataObject) -> None:
    wire = bytearray(codec.encode(msg))
    op = data.draw(st.sampled_from(["flip", "truncate", "insert", "splice", "field"]))
    if op == "flip":
        for _ in range(data.draw(st.integers(1, 3))):
            i = data.draw(st.integers(0, len(wire) - 1))
            wire[i] ^= 1 << data.draw(st.integers(0, 7))
    elif op == "truncate":
        del wire[data.draw(st.integers(0, len(wire) - 1)) :]
    elif op == "insert":
        i = data.draw(st.integers(0, len(wire)))
        wire[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    elif op == "splice":
        other = codec.encode(data.draw(ANY_MESSAGE))
        i = data.draw(st.integers(0, len(wire)))
        j = data.draw(st.integers(0, len(other)))
        wire = wire[:i] + other[j:]
    else:  # one field's value swapped for anything
        doc = msgpack.unpackb(bytes(wire), raw=False)
        key = data.draw(st.sampled_from(sorted(doc)))
        doc[key] = data.draw(MSGPACK_VALUES)
        wire = bytearray(msgpack.packb(doc, use_bin_type=True))
    accepted_or_refused(bytes(wire))
