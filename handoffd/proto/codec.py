"""Wire codec: frozen dataclasses as canonical msgpack, decoded strictly and boundedly.

A message is a msgpack map ``{"t": <tag>, <field>: <value>, ...}``; a nested
record is a map of its fields. **Canonical form**: map keys in ascending order
of their UTF-8 bytes, every value in its shortest msgpack encoding, text as
``str`` and byte strings as ``bin`` — exactly what :func:`encode` produces. The
decoder accepts nothing else: whatever the bytes, it returns a registered
message or raises ``ProtocolError`` (blame: peer) with one of these codes:

``decode-oversize``       the input is longer than ``max_size``
``decode-malformed``      not one well-formed msgpack value
``decode-ext-type``       a msgpack extension type (timestamps included)
``decode-trailing-bytes`` bytes after the value
``decode-too-deep``       arrays/maps nested deeper than ``MAX_DEPTH``
``decode-too-long``       a string, byte string, array or map over its bound
``decode-duplicate-key``  a map repeats a key
``decode-not-a-message``  not a map with a string ``"t"``
``decode-unknown-type``   ``"t"`` names no registered message
``decode-unexpected-type`` a registered message, but not the one required
``decode-missing-field``  a field is absent
``decode-extra-field``    a key that is not a field
``decode-wrong-type``     a value of the wrong type (bool is not int, str is not bytes)
``decode-out-of-range``   an integer outside its range
``decode-too-short``      a string, byte string or array under its minimum
``decode-non-canonical``  valid, but not in canonical form

Field types are those of ``schema.py`` (where messages are registered). Floats,
maps with free keys and extension types are not supported.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgpack

from handoffd.errors import Blame, ProtocolError
from handoffd.proto.schema import (
    MESSAGES as MESSAGES,
)
from handoffd.proto.schema import (
    SCHEMAS,
    TAG_KEY,
    BoolField,
    BytesField,
    Field,
    IntField,
    OptionalField,
    RecordField,
    Schema,
    StrField,
    TupleField,
    limits,
)
from handoffd.proto.schema import tag_of as tag_of

MAX_MESSAGE = 1024 * 1024
"""Default bound on one encoded message."""
MAX_DEPTH = 8
"""Deepest array/map nesting a decoder accepts (the schemas need 3)."""

T = TypeVar("T")


def _err(code: str, message: str) -> ProtocolError:
    return ProtocolError(message, code=code, blame=Blame.PEER)


# ---------------------------------------------------------------- validation


def _check_len(n: int, lo: int, hi: int, name: str, unit: str) -> None:
    if n > hi:
        raise _err("decode-too-long", f"{name} has more than {hi} {unit}")
    if n < lo:
        raise _err("decode-too-short", f"{name} has fewer than {lo} {unit}")


def _value(v: Any, f: Field, name: str) -> Any:
    """``v`` (as unpacked) checked against ``f``, as the dataclass holds it."""
    if isinstance(f, IntField):
        if type(v) is not int:
            raise _err("decode-wrong-type", f"{name} must be an integer")
        if not f.lo <= v <= f.hi:
            raise _err("decode-out-of-range", f"{name} is out of range")
        return v
    if isinstance(f, BoolField):
        if type(v) is not bool:
            raise _err("decode-wrong-type", f"{name} must be a bool")
        return v
    if isinstance(f, StrField):
        if type(v) is not str:
            raise _err("decode-wrong-type", f"{name} must be a string")
        _check_len(len(v), f.lo, f.hi, name, "characters")
        # Lone surrogates have no UTF-8 form: how the encoder refuses them.
        if not v.isascii():
            try:
                v.encode()
            except UnicodeEncodeError:
                raise _err("decode-wrong-type", f"{name} is not valid Unicode") from None
        return v
    if isinstance(f, BytesField):
        if type(v) is not bytes:
            raise _err("decode-wrong-type", f"{name} must be bytes")
        _check_len(len(v), f.lo, f.hi, name, "bytes")
        return v
    if isinstance(f, OptionalField):
        return None if v is None else _value(v, f.inner, name)
    if isinstance(f, TupleField):
        if not isinstance(v, list | tuple):
            raise _err("decode-wrong-type", f"{name} must be an array")
        _check_len(len(v), f.lo, f.hi, name, "elements")
        return tuple(_value(x, f.inner, name) for x in v)
    return _build(v, SCHEMAS[f.cls], expect_tag=None)


def _build(value: Any, schema: Schema, *, expect_tag: str | None) -> Any:
    """The dataclass instance a decoded map describes (the tag is checked by the caller)."""
    name = schema.cls.__name__
    if not isinstance(value, dict):
        raise _err("decode-wrong-type", f"{name} must be a map")
    if any(type(k) is not str for k in value):
        raise _err("decode-wrong-type", f"{name}: map keys must be strings")
    expected = {field for field, _ in schema.fields}
    if expect_tag is not None:
        expected.add(TAG_KEY)
    missing = expected - value.keys()
    if missing:
        raise _err("decode-missing-field", f"{name} lacks {min(missing)!r}")
    extra = value.keys() - expected
    if extra:
        raise _err("decode-extra-field", f"{name} has unknown field {min(extra)[:40]!r}")
    return schema.cls(**{field: _value(value[field], f, field) for field, f in schema.fields})


# ---------------------------------------------------------------- encoding


def _to_wire(v: Any, f: Field) -> Any:
    if isinstance(f, OptionalField):
        return None if v is None else _to_wire(v, f.inner)
    if isinstance(f, TupleField):
        return [_to_wire(x, f.inner) for x in v]
    if isinstance(f, RecordField):
        return _record_to_wire(v, SCHEMAS[f.cls], None)
    return v


def _record_to_wire(value: Any, schema: Schema, tag: str | None) -> dict[str, Any]:
    body = {name: _to_wire(getattr(value, name), f) for name, f in schema.fields}
    if tag is not None:
        body[TAG_KEY] = tag
    # msgpack writes a dict in insertion order: insert in canonical order.
    return {k: body[k] for k in sorted(body, key=str.encode)}


def _pack(msg: object, schema: Schema) -> bytes:
    return msgpack.packb(_record_to_wire(msg, schema, schema.tag), use_bin_type=True)


def encode(msg: object) -> bytes:
    """Canonical msgpack of a registered message; ProtocolError(encode-invalid, local) if invalid."""
    schema = SCHEMAS.get(type(msg))
    if schema is None or schema.tag is None:
        raise TypeError(f"{type(msg).__name__} is not a registered message")
    wire = _record_to_wire(msg, schema, schema.tag)
    try:
        # The same checks a peer will make: never send what it must refuse.
        _build(wire, schema, expect_tag=schema.tag)
    except ProtocolError as exc:
        raise ProtocolError(
            f"refusing to send an invalid {schema.tag}: {exc.message}",
            code="encode-invalid",
            blame=Blame.LOCAL,
        ) from None
    return msgpack.packb(wire, use_bin_type=True)


# ---------------------------------------------------------------- decoding


class _List(list[Any]):
    """An unpacked array that knows its nesting depth."""

    __slots__ = ("depth",)
    depth: int


class _Map(dict[Any, Any]):
    """An unpacked map that knows its nesting depth."""

    __slots__ = ("depth",)
    depth: int


def _depth(values: Any) -> int:
    depth = 1 + max((v.depth for v in values if isinstance(v, _List | _Map)), default=0)
    if depth > MAX_DEPTH:
        raise _err("decode-too-deep", f"nesting deeper than {MAX_DEPTH}")
    return depth


def _list_hook(items: list[Any]) -> _List:
    out = _List(items)
    out.depth = _depth(items)
    return out


def _pairs_hook(pairs: list[tuple[Any, Any]]) -> _Map:
    out = _Map(pairs)
    if len(out) != len(pairs):
        raise _err("decode-duplicate-key", "a map repeats a key")
    out.depth = _depth(out.values())
    return out


def _ext_hook(code: int, data: bytes) -> Any:
    raise _err("decode-ext-type", "msgpack extension types are not allowed")


def _unpack(data: bytes, max_size: int) -> Any:
    bounds = limits()
    unpacker = msgpack.Unpacker(
        raw=False,
        use_list=True,
        strict_map_key=True,
        list_hook=_list_hook,
        object_pairs_hook=_pairs_hook,
        ext_hook=_ext_hook,
        max_buffer_size=max(len(data), 1),
        # msgpack checks these before it allocates: nothing oversize is built.
        max_str_len=min(max_size, bounds["str"]),
        max_bin_len=min(max_size, bounds["bin"]),
        max_array_len=min(max_size, bounds["array"]),
        max_map_len=min(max_size, bounds["map"]),
        max_ext_len=0,
    )
    unpacker.feed(data)
    try:
        value = unpacker.unpack()
    except ProtocolError:
        raise
    except msgpack.OutOfData:
        raise _err("decode-malformed", "message is truncated") from None
    except (msgpack.StackError, RecursionError):
        raise _err("decode-too-deep", "nesting too deep") from None
    # On hostile input msgpack raises ValueError, TypeError, FormatError,
    # UnicodeDecodeError, OverflowError, ...: every one means malformed.
    except Exception as exc:  # noqa: BLE001
        text = str(exc) if isinstance(exc, ValueError) else ""
        if "max_ext_len" in text:
            raise _err("decode-ext-type", "msgpack extension types are not allowed") from None
        if "exceeds max_" in text:
            raise _err("decode-too-long", f"a value is over its bound: {text[:80]}") from None
        if "for map key" in text:
            raise _err("decode-wrong-type", "map keys must be strings") from None
        raise _err("decode-malformed", f"not valid msgpack: {type(exc).__name__}") from None
    if unpacker.tell() != len(data):
        raise _err("decode-trailing-bytes", "bytes after the end of the message")
    return value


def decode(data: bytes, *, max_size: int = MAX_MESSAGE) -> Any:
    """One registered message from ``data``; ProtocolError (blame peer) on anything else."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _err("decode-malformed", "a message must be bytes")
    data = bytes(data)
    if len(data) > max_size:
        raise _err("decode-oversize", f"message of {len(data)} bytes exceeds {max_size}")
    value = _unpack(data, max_size)
    if not isinstance(value, dict) or type(value.get(TAG_KEY)) is not str:
        raise _err("decode-not-a-message", "a message is a map with a string type tag")
    tag = value[TAG_KEY]
    cls = MESSAGES.get(tag)
    if cls is None:
        raise _err("decode-unknown-type", f"unknown message type {tag[:40]!r}")
    schema = SCHEMAS[cls]
    msg = _build(value, schema, expect_tag=tag)
    # Canonical iff it re-encodes to the very same bytes (key order, widths, types).
    if _pack(msg, schema) != data:
        raise _err("decode-non-canonical", f"{tag} is not in canonical form")
    return msg


def decode_as(data: bytes, cls: type[T], *, max_size: int = MAX_MESSAGE) -> T:
    """Like :func:`decode`, and the message must be a ``cls`` (else decode-unexpected-type)."""
    msg = decode(data, max_size=max_size)
    if not isinstance(msg, cls):
        raise _err("decode-unexpected-type", f"expected {cls.__name__}, got {tag_of(msg)}")
    return msg
