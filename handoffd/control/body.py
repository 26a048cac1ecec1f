"""Request bodies: strict, bounded JSON parsing, the field checkers, and ``request_fields``, which
checks a body against a request model (``models``: msgspec structs whose fields carry their
checkers as ``Annotated[..., Check(fn)]``)."""

from __future__ import annotations

import functools
import json
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from handoffd.control.limits import MAX_BODY, MAX_JSON_DEPTH
from handoffd.errors import ApiError
from handoffd.text import has_non_utf8


def api_error(code: str, message: str, status: int = 400) -> ApiError:
    """An ``ApiError`` with ``code`` (HTTP 400 unless told)."""
    return ApiError(message, code=code, status=status)


# ---------------------------------------------------------------- JSON


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise api_error("malformed-json", f"duplicate key {key!r:.60}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise api_error("malformed-json", f"{name} is not JSON")


def parse_body(raw: bytes, *, max_size: int = MAX_BODY) -> dict[str, Any]:
    """The request body as a JSON object (duplicate keys, NaN and deep nesting refused)."""
    if len(raw) > max_size:
        raise api_error("body-too-large", f"request body is larger than {max_size} bytes", 413)
    if not raw.strip():
        return {}
    try:
        text = raw.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise api_error("malformed-json", "request body is not UTF-8") from None
    except RecursionError:
        raise api_error("malformed-json", "request body is nested too deeply") from None
    except ValueError as exc:
        if isinstance(exc, ApiError):
            raise
        raise api_error("malformed-json", f"request body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise api_error("not-an-object", "request body must be a JSON object")
    if _depth(value) > MAX_JSON_DEPTH:
        raise api_error("malformed-json", "request body is nested too deeply")
    if has_non_utf8(value):
        raise api_error(
            "not-utf8", "request body holds a string that is not UTF-8 (a lone surrogate)"
        )
    return value


def _depth(value: Any) -> int:
    stack: list[tuple[Any, int]] = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


# ---------------------------------------------------------------- fields


Checker = Callable[[Any, str], Any]


def fields(
    obj: Any,
    what: str,
    required: Mapping[str, Checker],
    optional: Mapping[str, Checker] | None = None,
) -> dict[str, Any]:
    """Check an object's fields: no unknown ones, every required one, each by its checker."""
    if not isinstance(obj, dict):
        raise api_error("not-an-object", f"{what} must be a JSON object")
    optional = optional or {}
    for key in obj:
        if key not in required and key not in optional:
            raise api_error("unknown-field", f"{what}: unknown field {key!r:.60}")
    out: dict[str, Any] = {}
    for key, check in required.items():
        if key not in obj:
            raise api_error("missing-field", f"{what}: missing field {key!r}")
        out[key] = check(obj[key], f"{what}.{key}")
    for key, check in optional.items():
        if key in obj and obj[key] is not None:
            out[key] = check(obj[key], f"{what}.{key}")
    return out


def string(max_len: int, *, min_len: int = 1) -> Checker:
    """A string of ``min_len``..``max_len`` characters without NUL."""

    def check(value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise api_error("wrong-type", f"{where} must be a string")
        if not min_len <= len(value) <= max_len or "\x00" in value:
            raise api_error("value-invalid", f"{where} must be {min_len} to {max_len} characters")
        return value

    return check


def boolean(value: Any, where: str) -> bool:
    """A JSON boolean."""
    if not isinstance(value, bool):
        raise api_error("wrong-type", f"{where} must be true or false")
    return value


def any_value(value: Any, where: str) -> Any:
    """Anything (checked later by its consumer)."""
    return value


# ---------------------------------------------------------------- request models


@dataclass(frozen=True, slots=True)
class Check:
    """A request model field's checker, as ``Annotated`` metadata: ``(value, where) -> value``.

    A field without one is checked by its type: ``str`` by the lengths of its ``msgspec.Meta``
    (``string``), ``bool`` by ``boolean``.
    """

    fn: Checker


def request_fields(model: type[msgspec.Struct], obj: Any, what: str) -> dict[str, Any]:
    """Check ``obj`` against ``model``'s fields (see ``fields``); the checked values by name."""
    required, optional = model_checkers(model)
    return fields(obj, what, required, optional)


@functools.cache
def model_checkers(model: type[msgspec.Struct]) -> tuple[dict[str, Checker], dict[str, Checker]]:
    """The checkers of ``model``'s required and optional fields, by JSON name."""
    hints = typing.get_type_hints(model, include_extras=True)
    required: dict[str, Checker] = {}
    optional: dict[str, Checker] = {}
    for f in msgspec.structs.fields(model):
        checker = _checker_of(hints[f.name], f"{model.__name__}.{f.name}")
        (required if f.required else optional)[f.encode_name] = checker
    return required, optional


def _checker_of(hint: Any, name: str) -> Checker:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kept = [a for a in typing.get_args(hint) if a not in (type(None), msgspec.UnsetType)]
        if len(kept) != 1:
            raise TypeError(f"{name}: a request field has one type (optional: | UnsetType)")
        hint = kept[0]
    base: Any = hint
    extras: tuple[Any, ...] = ()
    if typing.get_origin(hint) is typing.Annotated:
        base, *rest = typing.get_args(hint)
        extras = tuple(rest)
    for extra in extras:
        if isinstance(extra, Check):
            return extra.fn
    if base is bool:
        return boolean
    if base is str:
        meta: Any = next((m for m in extras if isinstance(m, msgspec.Meta)), None)
        if meta is not None and meta.max_length is not None:
            return string(meta.max_length, min_len=meta.min_length or 0)
    raise TypeError(f"{name}: a request field needs a Check or a bounded str or a bool")
