"""The control API's field checkers: each takes a decoded JSON value and where it is, and returns
the checked value or raises ``ApiError`` with a stable code (pure).

The request models (``models``) attach them to their fields (``body.Check``).
"""

from __future__ import annotations

import json
from typing import Any

from handoffd.control.body import api_error as _err
from handoffd.control.body import string
from handoffd.control.limits import MAX_ARG, MAX_ARGV, MAX_CONTEXT, MAX_TITLE, MIME_RE
from handoffd.names import APP_ID_RE, KNOWN_TYPES, is_type_word
from handoffd.text import file_name_problem, name_problem


def check_app_id(value: Any, where: str = "app_id") -> str:
    """An app id: ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}`` (reverse DNS fits)."""
    if not isinstance(value, str):
        raise _err("wrong-type", f"{where} must be a string")
    if not APP_ID_RE.fullmatch(value):
        raise _err("bad-app-id", f"{where} must match {APP_ID_RE.pattern}")
    return value


def check_title(value: Any, where: str = "title") -> str:
    """A title: 0..256 characters, none a control, format or line-separator character."""
    if not isinstance(value, str):
        raise _err("wrong-type", f"{where} must be a string")
    if len(value) > MAX_TITLE or name_problem(value) is not None:
        raise _err(
            "bad-title",
            f"{where} must be at most {MAX_TITLE} characters, none a control, format "
            "or line-separator character",
        )
    return value


def check_context(value: Any, where: str = "context") -> dict[str, Any]:
    """A JSON object of at most 64 KiB (compact UTF-8)."""
    if not isinstance(value, dict):
        raise _err("wrong-type", f"{where} must be a JSON object")
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    if size > MAX_CONTEXT:
        raise _err("context-too-large", f"{where} is {size} bytes; at most {MAX_CONTEXT}", 413)
    return value


def check_item_type(value: Any, where: str = "type") -> str:
    """``message``, ``document``, ``clipboard``, ``url`` or an app word ``[a-z][a-z0-9_-]{0,31}``."""
    if not isinstance(value, str):
        raise _err("wrong-type", f"{where} must be a string")
    if value not in KNOWN_TYPES and not is_type_word(value):
        raise _err(
            "bad-item-type", f"{where} must be a known type or match [a-z][a-z0-9_-]{{0,31}}"
        )
    return value


def check_item_name(value: Any, where: str = "name") -> str:
    """A safe file name (handoffd.text.file_name_problem): 1..255 UTF-8 bytes, one component."""
    if not isinstance(value, str):
        raise _err("wrong-type", f"{where} must be a string")
    problem = file_name_problem(value)
    if problem is not None:
        raise _err("bad-item-name", f"{where} {problem}")
    return value


def is_safe_name(name: str) -> bool:
    """True if ``name`` can be used as a single file name in a directory we own."""
    return file_name_problem(name) is None


def check_mime(value: Any, where: str = "mime") -> str:
    """A media type ``type/subtype``."""
    if not isinstance(value, str):
        raise _err("wrong-type", f"{where} must be a string")
    if not MIME_RE.fullmatch(value):
        raise _err("bad-mime", f"{where} must be a media type like text/plain")
    return value.lower()


def check_device_name(value: Any, where: str = "name") -> str:
    """A device name: 1..64 characters, none a control, format or line-separator character."""
    text: str = string(64)(value, where)
    problem = name_problem(text)
    if problem is not None:
        raise _err("bad-device-name", f"{where} {problem}")
    return text


def check_launch(value: Any, where: str) -> tuple[str, ...]:
    """An argv: 1..64 strings, the program not empty, none longer than 4096 or with NUL."""
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise _err("wrong-type", f"{where} must be a list of strings")
    if not 1 <= len(value) <= MAX_ARGV:
        raise _err("bad-launch", f"{where} must have 1 to {MAX_ARGV} arguments")
    if not value[0] or any(len(a) > MAX_ARG or "\x00" in a for a in value):
        raise _err("bad-launch", f"{where}: empty program, or an argument too long or with NUL")
    return tuple(value)


def types_checker(max_types: int) -> Any:
    """A list of at most ``max_types`` item types, duplicates dropped (order kept)."""

    def check(value: Any, where: str) -> list[str]:
        if not isinstance(value, list):
            raise _err("wrong-type", f"{where} must be a list of item types")
        if len(value) > max_types:
            raise _err("value-invalid", f"{where}: at most {max_types} types")
        return list(dict.fromkeys(check_item_type(v, f"{where}[]") for v in value))

    return check
