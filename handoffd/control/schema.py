"""Control API request schemas (strict, bounded): names, items, and each request's fields.

Body parsing and the field checkers are in ``body``, the limits in ``limits``, the
OpenAPI 3.1 document in ``openapi``; their names are re-exported here.

Every check raises ``ApiError`` with a stable ``code`` (see docs/control-api.md):
``malformed-json``, ``not-utf8``, ``body-too-large``, ``not-an-object``, ``unknown-field``,
``missing-field``, ``wrong-type``, ``value-invalid``, ``bad-app-id``,
``bad-title``, ``context-too-large``, ``bad-item-type``, ``bad-item-name``,
``duplicate-item-name``, ``bad-mime``, ``item-content``, ``item-too-large``,
``too-many-items``, ``bad-base64``, ``item-file-missing``,
``item-file-not-regular``, ``item-file-unreadable``, ``bad-launch``,
``bad-device-name``.

Pure except ``check_item_path``, which looks at the file system (call it off
the event loop).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
from dataclasses import dataclass
from typing import Any

from handoffd.config import APP_ID_RE, KNOWN_TYPES, is_type_word
from handoffd.control.body import Checker, any_value, boolean, fields, parse_body, string
from handoffd.control.body import api_error as _err
from handoffd.control.limits import (
    MAX_ARG,
    MAX_ARGV,
    MAX_BODY,
    MAX_CONTEXT,
    MAX_DATA_ITEM,
    MAX_INVITE,
    MAX_ITEMS,
    MAX_JSON_DEPTH,
    MAX_NAME_BYTES,
    MAX_PATH,
    MAX_TEXT_ITEM,
    MAX_TITLE,
    MIME_RE,
    SESSION_ID_RE,
)
from handoffd.control.openapi import openapi_document
from handoffd.items import DEFAULT_MIME, Item
from handoffd.text import file_name_problem, name_problem

__all__ = [
    "MAX_ARG",
    "MAX_ARGV",
    "MAX_BODY",
    "MAX_CONTEXT",
    "MAX_DATA_ITEM",
    "MAX_INVITE",
    "MAX_ITEMS",
    "MAX_JSON_DEPTH",
    "MAX_NAME_BYTES",
    "MAX_PATH",
    "MAX_TEXT_ITEM",
    "MAX_TITLE",
    "MIME_RE",
    "SESSION_ID_RE",
    "Checker",
    "any_value",
    "boolean",
    "fields",
    "openapi_document",
    "parse_body",
    "string",
]

# ---------------------------------------------------------------- names


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


# ---------------------------------------------------------------- items


def check_item(value: Any, where: str) -> Item:
    """One item of a session (content not yet read from disk: see check_item_path)."""
    f = fields(
        value,
        where,
        {"type": check_item_type, "name": check_item_name},
        {
            "mime": check_mime,
            "text": string(MAX_TEXT_ITEM, min_len=0),
            "data_base64": string(MAX_DATA_ITEM * 4 // 3 + 4, min_len=0),
            "path": string(MAX_PATH),
        },
    )
    sources = [k for k in ("text", "data_base64", "path") if k in f]
    if len(sources) != 1:
        raise _err("item-content", f"{where} needs exactly one of text, data_base64 or path")
    text = f.get("text")
    if text is not None and len(text.encode("utf-8", "surrogatepass")) > MAX_TEXT_ITEM:
        raise _err("item-too-large", f"{where}.text is larger than {MAX_TEXT_ITEM} bytes", 413)
    data = None
    if "data_base64" in f:
        try:
            data = base64.b64decode(f["data_base64"], validate=True)
        except (binascii.Error, ValueError):
            raise _err("bad-base64", f"{where}.data_base64 is not base64") from None
        if len(data) > MAX_DATA_ITEM:
            raise _err("item-too-large", f"{where} data is larger than {MAX_DATA_ITEM} bytes", 413)
    path = f.get("path")
    if path is not None and not os.path.isabs(path):
        raise _err("value-invalid", f"{where}.path must be absolute")
    mime = f.get("mime", DEFAULT_MIME)
    if text is not None:
        return Item.of_text(f["type"], f["name"], text, mime=mime)
    if data is not None:
        return Item.of_data(f["type"], f["name"], data, mime=mime)
    return Item(f["type"], f["name"], mime, "path", 0, path=path)  # size: check_item_path


def check_items(value: Any, where: str = "items") -> tuple[Item, ...]:
    """A list of at most 64 items with distinct names."""
    if not isinstance(value, list):
        raise _err("wrong-type", f"{where} must be a list")
    if len(value) > MAX_ITEMS:
        raise _err("too-many-items", f"{where}: at most {MAX_ITEMS} items")
    items = tuple(check_item(v, f"{where}[{i}]") for i, v in enumerate(value))
    names = [i.name for i in items]
    if len(set(names)) != len(names):
        raise _err("duplicate-item-name", f"{where}: item names must be distinct")
    return items


def check_item_path(path: str) -> tuple[int, float]:
    """(size, mtime) of an item's file: it must exist and be a readable regular file. Blocking."""
    try:
        # O_NONBLOCK: opening a FIFO must not hang the daemon.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise _err("item-file-missing", f"no such file: {path}") from None
    except PermissionError:
        raise _err("item-file-unreadable", f"cannot read {path}: permission denied") from None
    except OSError as exc:
        raise _err("item-file-unreadable", f"cannot open {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        raise _err("item-file-not-regular", f"{path} is not a regular file")
    return st.st_size, st.st_mtime


# ---------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class SessionRequest:
    """``POST /v1/sessions`` (all fields) or ``PUT /v1/sessions/{id}`` (any of them)."""

    app_id: str | None
    title: str | None
    context: dict[str, Any] | None
    items: tuple[Item, ...] | None


_SESSION_FIELDS: dict[str, Checker] = {
    "app_id": check_app_id,
    "title": check_title,
    "context": check_context,
    "items": check_items,
}


def session_create(body: Any) -> SessionRequest:
    """``POST /v1/sessions``: app_id and title required; context {} and items [] by default."""
    f = fields(
        body,
        "session",
        {"app_id": check_app_id, "title": check_title},
        {"context": check_context, "items": check_items},
    )
    return SessionRequest(f["app_id"], f["title"], f.get("context", {}), f.get("items", ()))


def session_update(body: Any) -> SessionRequest:
    """``PUT /v1/sessions/{id}``: any of title, context, items (app_id, if given, must match)."""
    f = fields(body, "session", {}, _SESSION_FIELDS)
    return SessionRequest(f.get("app_id"), f.get("title"), f.get("context"), f.get("items"))


@dataclass(frozen=True, slots=True)
class PairRequest:
    """``POST /v1/pair``."""

    invite: str
    server: str | None
    fingerprint: str | None
    name: str | None


def pair_request(body: Any) -> PairRequest:
    """``{"invite", "server"?, "fingerprint"?, "name"?}``."""
    f = fields(
        body,
        "pair",
        {"invite": string(MAX_INVITE)},
        {"server": string(2048), "fingerprint": string(80), "name": check_device_name},
    )
    return PairRequest(f["invite"], f.get("server"), f.get("fingerprint"), f.get("name"))


def check_device_name(value: Any, where: str = "name") -> str:
    """A device name: 1..64 characters, none a control, format or line-separator character."""
    text: str = string(64)(value, where)
    problem = name_problem(text)
    if problem is not None:
        raise _err("bad-device-name", f"{where} {problem}")
    return text


def _launch(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise _err("wrong-type", f"{where} must be a list of strings")
    if not 1 <= len(value) <= MAX_ARGV:
        raise _err("bad-launch", f"{where} must have 1 to {MAX_ARGV} arguments")
    if not value[0] or any(len(a) > MAX_ARG or "\x00" in a for a in value):
        raise _err("bad-launch", f"{where}: empty program, or an argument too long or with NUL")
    return tuple(value)


def app_request(body: Any) -> tuple[str, tuple[str, ...]]:
    """``POST /v1/apps``: ``{"app_id", "launch": [argv...]}``."""
    f = fields(body, "app", {"app_id": check_app_id, "launch": _launch})
    return f["app_id"], f["launch"]


def empty_request(body: Any, what: str) -> None:
    """A body that must be empty or ``{}``."""
    fields(body, what, {})


def check_session_id(text: str) -> str:
    """A session id from a URL; 404 session-not-found if it cannot be one."""
    if not SESSION_ID_RE.fullmatch(text):
        raise _err("session-not-found", "no such session", 404)
    return text
