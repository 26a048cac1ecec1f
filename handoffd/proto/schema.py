"""Message schemas: frozen dataclasses registered as wire messages or records, their fields
compiled (with ``Annotated`` bounds) into the checks ``codec`` applies.

Field types: ``int`` (default range: signed 64-bit), ``bool``, ``str``,
``bytes``, ``X | None``, ``tuple[X, ...]`` and registered records, refined by
``Annotated[X, Max(n), Min(n), Range(lo, hi)]``. String bounds count code
points (at most 4 UTF-8 bytes each).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

DEFAULT_MAX_STR = 4096
DEFAULT_MAX_BYTES = 64 * 1024
DEFAULT_MAX_ITEMS = 1024
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
UINT_MAX = 2**64 - 1
TAG_KEY = "t"

T = TypeVar("T")


# ---------------------------------------------------------------- annotations


@dataclass(frozen=True, slots=True)
class Max:
    """Annotated bound: at most ``n`` characters, bytes or elements."""

    n: int


@dataclass(frozen=True, slots=True)
class Min:
    """Annotated bound: at least ``n`` characters, bytes or elements."""

    n: int


@dataclass(frozen=True, slots=True)
class Range:
    """Annotated bound on an int: ``lo <= value <= hi`` (within -2**63 .. 2**64-1)."""

    lo: int
    hi: int


# ---------------------------------------------------------------- compiled schema


@dataclass(frozen=True, slots=True)
class IntField:
    """An integer in ``lo..hi``."""

    lo: int
    hi: int


@dataclass(frozen=True, slots=True)
class BoolField:
    """A bool (never an int)."""


@dataclass(frozen=True, slots=True)
class StrField:
    """Text of ``lo..hi`` characters."""

    lo: int
    hi: int


@dataclass(frozen=True, slots=True)
class BytesField:
    """A byte string of ``lo..hi`` bytes."""

    lo: int
    hi: int


@dataclass(frozen=True, slots=True)
class OptionalField:
    """``inner`` or None."""

    inner: Field


@dataclass(frozen=True, slots=True)
class TupleField:
    """A tuple of ``lo..hi`` elements of ``inner`` (an array on the wire)."""

    inner: Field
    lo: int
    hi: int


@dataclass(frozen=True, slots=True)
class RecordField:
    """A registered record (a map of its fields on the wire)."""

    cls: type[Any]


Field = IntField | BoolField | StrField | BytesField | OptionalField | TupleField | RecordField


@dataclass(frozen=True, slots=True)
class Schema:
    """A registered dataclass: its fields in canonical (wire) order."""

    cls: type[Any]
    fields: tuple[tuple[str, Field], ...]
    tag: str | None


SCHEMAS: dict[type[Any], Schema] = {}
_LIMITS: dict[str, int] = {}
MESSAGES: dict[str, type[Any]] = {}
"""The one registry of messages: wire tag -> dataclass."""


def _bounds(meta: list[Any], lo: int, hi: int) -> tuple[int, int]:
    for m in meta:
        if isinstance(m, Max):
            hi = m.n
        elif isinstance(m, Min):
            lo = m.n
    if not 0 <= lo <= hi:
        raise TypeError(f"bad length bounds {lo}..{hi}")
    return lo, hi


def _compile(hint: Any, meta: list[Any] | None = None) -> Field:
    meta = list(meta or [])
    if typing.get_origin(hint) is typing.Annotated:
        base, *extra = typing.get_args(hint)
        return _compile(base, meta + extra)
    lengths = [m for m in meta if isinstance(m, Max | Min)]
    ranges = [m for m in meta if isinstance(m, Range)]
    if (lengths and hint in (int, bool)) or (ranges and hint is not int) or (meta and hint is bool):
        raise TypeError(f"{meta} does not apply to {hint!r}")
    if hint is bool:
        return BoolField()
    if hint is int:
        lo, hi = (ranges[-1].lo, ranges[-1].hi) if ranges else (INT_MIN, INT_MAX)
        if not INT_MIN <= lo <= hi <= UINT_MAX:
            raise TypeError(f"bad int range {lo}..{hi}")
        return IntField(lo, hi)
    if hint is str:
        return StrField(*_bounds(meta, 0, DEFAULT_MAX_STR))
    if hint is bytes:
        return BytesField(*_bounds(meta, 0, DEFAULT_MAX_BYTES))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        rest = [a for a in args if a is not type(None)]
        if len(args) != 2 or len(rest) != 1:
            raise TypeError(f"only X | None unions are supported, not {hint}")
        return OptionalField(_compile(rest[0], meta))
    if typing.get_origin(hint) is tuple:
        targs = typing.get_args(hint)
        if len(targs) != 2 or targs[1] is not Ellipsis:
            raise TypeError(f"only tuple[X, ...] is supported, not {hint}")
        return TupleField(_compile(targs[0]), *_bounds(meta, 0, DEFAULT_MAX_ITEMS))
    if isinstance(hint, type) and hint in SCHEMAS and not meta:
        return RecordField(hint)
    raise TypeError(f"unsupported field type {hint!r}")


def _register(cls: type[Any], tag: str | None) -> Schema:
    params = getattr(cls, "__dataclass_params__", None)
    if not dataclasses.is_dataclass(cls) or params is None or not params.frozen:
        raise TypeError(f"{cls.__name__} must be a frozen dataclass")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = [(f.name, _compile(hints[f.name])) for f in dataclasses.fields(cls)]
    if any(name == TAG_KEY for name, _ in fields):
        raise TypeError(f"field name {TAG_KEY!r} is reserved")
    schema = Schema(cls, tuple(sorted(fields, key=lambda f: f[0].encode())), tag)
    SCHEMAS[cls] = schema
    _LIMITS.clear()
    return schema


def record(cls: type[T]) -> type[T]:
    """Register a nested record type (a map of its fields on the wire)."""
    _register(cls, None)
    return cls


def message(tag: str) -> Callable[[type[T]], type[T]]:
    """Register a message type under the wire tag ``tag`` (stable, never reused)."""

    def register(cls: type[T]) -> type[T]:
        if tag in MESSAGES:
            raise TypeError(f"message tag {tag!r} registered twice")
        _register(cls, tag)
        MESSAGES[tag] = cls
        return cls

    return register


def schema_of(cls: type[Any]) -> Schema:
    """The compiled schema of a registered message or record class."""
    return SCHEMAS[cls]


def tag_of(msg: object) -> str:
    """The wire tag of a registered message instance (KeyError if it is none)."""
    tag = SCHEMAS[type(msg)].tag
    if tag is None:
        raise KeyError(type(msg).__name__)
    return tag


def limits() -> dict[str, int]:
    """The largest string, byte string, array and map any registered schema allows."""
    if _LIMITS:
        return _LIMITS
    out = {"str": 1, "bin": 0, "array": 0, "map": 1}

    def walk(f: Field) -> None:
        if isinstance(f, StrField):
            out["str"] = max(out["str"], 4 * f.hi)
        elif isinstance(f, BytesField):
            out["bin"] = max(out["bin"], f.hi)
        elif isinstance(f, TupleField):
            out["array"] = max(out["array"], f.hi)
            walk(f.inner)
        elif isinstance(f, OptionalField):
            walk(f.inner)

    for schema in SCHEMAS.values():
        out["map"] = max(out["map"], len(schema.fields) + 1)
        for name, f in schema.fields:
            out["str"] = max(out["str"], len(name.encode()))
            walk(f)
    _LIMITS.update(out)
    return out
