"""Wire messages: frozen dataclasses encoded as canonical msgpack, decoded strictly.

A message is a msgpack map ``{"t": <tag>, <field>: <value>, ...}`` with keys in
ascending order and every value in its shortest msgpack form; nested records
are maps of their fields the same way. Decoding refuses anything else with a
``ProtocolError`` (blame: peer) carrying one of these codes, and raises nothing
else whatever the bytes:

``decode-oversize``, ``decode-malformed``, ``decode-trailing-bytes``,
``decode-not-a-message``, ``decode-unknown-type``, ``decode-missing-field``,
``decode-extra-field``, ``decode-wrong-type``, ``decode-out-of-range``,
``decode-too-long``, ``decode-duplicate-key``, ``decode-non-canonical``.

Field types: ``int`` (signed 64-bit range), ``bool``, ``str``, ``bytes``,
``X | None``, ``tuple[X, ...]`` and registered records, each optionally wrapped
in ``Annotated[X, Max(n)]`` to bound a length (default bounds below).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgpack

from handoffd.errors import Blame, ProtocolError

MAX_MESSAGE = 1024 * 1024
DEFAULT_MAX_STR = 4096
DEFAULT_MAX_BYTES = 64 * 1024
DEFAULT_MAX_ITEMS = 1024
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
TAG_KEY = "t"


@dataclass(frozen=True, slots=True)
class Max:
    """Annotated bound: at most ``n`` characters, bytes or elements."""

    n: int


class _Kind:
    INT, BOOL, STR, BYTES, OPTIONAL, TUPLE, RECORD = range(7)


@dataclass(frozen=True, slots=True)
class _Type:
    kind: int
    limit: int = 0
    inner: _Type | None = None
    record: type[Any] | None = None


@dataclass(frozen=True, slots=True)
class _Schema:
    cls: type[Any]
    fields: tuple[tuple[str, _Type], ...]


T = TypeVar("T")
_RECORDS: dict[type[Any], _Schema] = {}
MESSAGES: dict[str, _Schema] = {}
_TAGS: dict[type[Any], str] = {}


def _err(code: str, message: str) -> ProtocolError:
    return ProtocolError(message, code=code, blame=Blame.PEER)


def _compile(hint: Any, limit: int | None = None) -> _Type:
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(hint)
        bounds = [m.n for m in meta if isinstance(m, Max)]
        return _compile(base, bounds[0] if bounds else None)
    if hint is bool:
        return _Type(_Kind.BOOL)
    if hint is int:
        return _Type(_Kind.INT)
    if hint is str:
        return _Type(_Kind.STR, limit or DEFAULT_MAX_STR)
    if hint is bytes:
        return _Type(_Kind.BYTES, limit or DEFAULT_MAX_BYTES)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1 or len(typing.get_args(hint)) != 2:
            raise TypeError(f"only X | None unions are supported, not {hint}")
        return _Type(_Kind.OPTIONAL, inner=_compile(args[0], limit))
    if origin is tuple:
        targs = typing.get_args(hint)
        if len(targs) != 2 or targs[1] is not Ellipsis:
            raise TypeError(f"only tuple[X, ...] is supported, not {hint}")
        return _Type(_Kind.TUPLE, limit or DEFAULT_MAX_ITEMS, inner=_compile(targs[0]))
    if isinstance(hint, type) and hint in _RECORDS:
        return _Type(_Kind.RECORD, record=hint)
    raise TypeError(f"unsupported field type {hint!r}")


def _schema_of(cls: type[Any]) -> _Schema:
    if not (dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen):  # type: ignore[attr-defined]
        raise TypeError(f"{cls.__name__} must be a frozen dataclass")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = tuple(
        (f.name, _compile(hints[f.name])) for f in dataclasses.fields(cls) if f.name != TAG_KEY
    )
    if any(name == TAG_KEY for name, _ in fields):
        raise TypeError(f"field name {TAG_KEY!r} is reserved")
    return _Schema(cls, tuple(sorted(fields, key=lambda f: f[0].encode())))


def record(cls: type[T]) -> type[T]:
    """Register a nested record type (encoded as a map of its fields)."""
    _RECORDS[cls] = _schema_of(cls)
    return cls


def message(tag: str) -> Callable[[type[T]], type[T]]:
    """Register a top-level message type under ``tag``."""

    def register(cls: type[T]) -> type[T]:
        if tag in MESSAGES:
            raise TypeError(f"message tag {tag!r} registered twice")
        schema = _schema_of(cls)
        _RECORDS[cls] = schema
        MESSAGES[tag] = schema
        _TAGS[cls] = tag
        return cls

    return register


def tag_of(msg: object) -> str:
    """The wire tag of a registered message instance."""
    return _TAGS[type(msg)]


# ---------------------------------------------------------------- encoding


def _to_wire(value: Any, t: _Type) -> Any:
    if t.kind == _Kind.OPTIONAL:
        assert t.inner is not None  # noqa: S101 - schema invariant, not peer input
        return None if value is None else _to_wire(value, t.inner)
    if t.kind == _Kind.TUPLE:
        assert t.inner is not None  # noqa: S101 - schema invariant
        inner = t.inner
        return [_to_wire(v, inner) for v in value]
    if t.kind == _Kind.RECORD:
        assert t.record is not None  # noqa: S101 - schema invariant
        return _record_to_wire(value, _RECORDS[t.record])
    return value


def _record_to_wire(value: Any, schema: _Schema) -> dict[str, Any]:
    return {name: _to_wire(getattr(value, name), t) for name, t in schema.fields}


def encode(msg: object) -> bytes:
    """Canonical msgpack of a registered message (keys sorted, shortest forms)."""
    tag = _TAGS.get(type(msg))
    if tag is None:
        raise TypeError(f"{type(msg).__name__} is not a registered message")
    schema = MESSAGES[tag]
    body = _record_to_wire(msg, schema)
    body[TAG_KEY] = tag
    problem = _check_record_value(body, schema, top=True)
    if problem:
        raise ProtocolError(
            f"refusing to send an invalid {tag}: {problem}",
            code="encode-invalid",
            blame=Blame.LOCAL,
        )
    ordered = dict(sorted(body.items(), key=lambda kv: kv[0].encode()))
    return _pack(ordered)


def _sorted_deep(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted_deep(value[k]) for k in sorted(value, key=lambda k: k.encode())}
    if isinstance(value, list):
        return [_sorted_deep(v) for v in value]
    return value


def _pack(value: Any) -> bytes:
    return msgpack.packb(_sorted_deep(value), use_bin_type=True)


# ---------------------------------------------------------------- decoding


def _pairs(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    keys = [k for k, _ in pairs]
    if len(set(map(repr, keys))) != len(keys):
        raise _err("decode-duplicate-key", "a map repeats a key")
    return _OrderedPairs(pairs)


class _OrderedPairs(dict[Any, Any]):
    """A decoded map that remembers its wire key order."""

    def __init__(self, pairs: list[tuple[Any, Any]]) -> None:
        super().__init__(pairs)
        self.order = [k for k, _ in pairs]


def _no_ext(code: int, data: bytes) -> Any:
    raise _err("decode-malformed", "msgpack extension types are not allowed")


def decode(data: bytes, *, max_size: int = MAX_MESSAGE) -> Any:
    """Decode one message strictly; ProtocolError (blame peer) on anything invalid."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _err("decode-malformed", "message is not bytes")
    data = bytes(data)
    if len(data) > max_size:
        raise _err("decode-oversize", f"message of {len(data)} bytes exceeds {max_size}")
    unpacker = msgpack.Unpacker(
        raw=False,
        use_list=True,
        strict_map_key=False,
        object_pairs_hook=_pairs,
        ext_hook=_no_ext,
        max_buffer_size=max(max_size, 1),
        max_str_len=max_size,
        max_bin_len=max_size,
        max_array_len=max_size,
        max_map_len=max_size,
        max_ext_len=0,
    )
    unpacker.feed(data)
    try:
        value = unpacker.unpack()
    except ProtocolError:
        raise
    except msgpack.OutOfData:
        raise _err("decode-malformed", "message is truncated") from None
    # msgpack raises many types on hostile input (ValueError, TypeError,
    # StackError, UnicodeDecodeError, FormatError, ...): all mean malformed.
    except Exception as exc:  # noqa: BLE001
        raise _err("decode-malformed", f"not valid msgpack: {type(exc).__name__}") from None
    if unpacker.tell() != len(data):
        raise _err("decode-trailing-bytes", "bytes after the end of the message")
    if not isinstance(value, dict):
        raise _err("decode-not-a-message", "a message must be a map")
    tag = value.get(TAG_KEY)
    if not isinstance(tag, str):
        raise _err("decode-not-a-message", "a message needs a string type tag")
    schema = MESSAGES.get(tag)
    if schema is None:
        raise _err("decode-unknown-type", f"unknown message type {tag[:40]!r}")
    msg = _build(value, schema, top=True)
    if _pack_message(value) != data:
        raise _err("decode-non-canonical", "message is not in canonical form")
    return msg


def _pack_message(value: Any) -> bytes:
    return _pack(_plain(value))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _check_record_value(value: Any, schema: _Schema, *, top: bool) -> str | None:
    try:
        _build(value, schema, top=top)
    except ProtocolError as exc:
        return exc.message
    return None


def _build(value: Any, schema: _Schema, *, top: bool) -> Any:
    if not isinstance(value, dict):
        raise _err("decode-wrong-type", f"{schema.cls.__name__} must be a map")
    if any(not isinstance(k, str) for k in value):
        raise _err("decode-wrong-type", "map keys must be strings")
    expected = {name for name, _ in schema.fields}
    if top:
        expected.add(TAG_KEY)
    missing = expected - value.keys()
    if missing:
        raise _err("decode-missing-field", f"{schema.cls.__name__} lacks {sorted(missing)[0]!r}")
    extra = value.keys() - expected
    if extra:
        raise _err(
            "decode-extra-field",
            f"{schema.cls.__name__} has unknown field {sorted(extra)[0][:40]!r}",
        )
    order = getattr(value, "order", None)
    if order is not None and order != sorted(order, key=lambda k: k.encode()):
        raise _err("decode-non-canonical", "map keys are not in canonical order")
    kwargs = {name: _value(value[name], t, name) for name, t in schema.fields}
    return schema.cls(**kwargs)


def _value(v: Any, t: _Type, name: str) -> Any:
    k = t.kind
    if k == _Kind.BOOL:
        if type(v) is not bool:
            raise _err("decode-wrong-type", f"{name} must be a bool")
        return v
    if k == _Kind.INT:
        if type(v) is not int:
            raise _err("decode-wrong-type", f"{name} must be an integer")
        if not INT_MIN <= v <= INT_MAX:
            raise _err("decode-out-of-range", f"{name} is out of range")
        return v
    if k == _Kind.STR:
        if type(v) is not str:
            raise _err("decode-wrong-type", f"{name} must be a string")
        if len(v) > t.limit:
            raise _err("decode-too-long", f"{name} is longer than {t.limit}")
        return v
    if k == _Kind.BYTES:
        if type(v) is not bytes:
            raise _err("decode-wrong-type", f"{name} must be bytes")
        if len(v) > t.limit:
            raise _err("decode-too-long", f"{name} is longer than {t.limit} bytes")
        return v
    if k == _Kind.OPTIONAL:
        assert t.inner is not None  # noqa: S101 - schema invariant
        return None if v is None else _value(v, t.inner, name)
    if k == _Kind.TUPLE:
        assert t.inner is not None  # noqa: S101 - schema invariant
        if type(v) is not list:
            raise _err("decode-wrong-type", f"{name} must be an array")
        if len(v) > t.limit:
            raise _err("decode-too-long", f"{name} has more than {t.limit} elements")
        inner = t.inner
        return tuple(_value(x, inner, name) for x in v)
    assert t.record is not None  # noqa: S101 - schema invariant
    return _build(v, _RECORDS[t.record], top=False)
