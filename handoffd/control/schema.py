"""Control API requests, checked (strict, bounded) against their models in ``models``.

The models are the one schema: their fields, which are required, and each field's checker
(``fieldchecks``) drive ``body.request_fields``; the same models make the OpenAPI document
(``openapi``) and the SDK's types. This module turns checked bodies into what the routes
use, and re-exports the limits, body parsing and the checkers under their old names.

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

import os
import stat
from dataclasses import dataclass
from typing import Any

from handoffd.control import answers, models
from handoffd.control.body import (
    Check,
    Checker,
    any_value,
    boolean,
    fields,
    parse_body,
    request_fields,
    string,
)
from handoffd.control.body import api_error as _err
from handoffd.control.fieldchecks import (
    check_app_id,
    check_context,
    check_device_name,
    check_item_name,
    check_item_type,
    check_mime,
    check_title,
    is_safe_name,
)
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
from handoffd.control.models import check_item, check_items
from handoffd.control.openapi import openapi_document
from handoffd.items import Item

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
    "Check",
    "Checker",
    "any_value",
    "boolean",
    "check_app_id",
    "check_context",
    "check_device_name",
    "check_item",
    "check_item_name",
    "check_item_type",
    "check_items",
    "check_mime",
    "check_title",
    "fields",
    "is_safe_name",
    "openapi_document",
    "parse_body",
    "request_fields",
    "string",
]


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


def session_create(body: Any) -> SessionRequest:
    """``POST /v1/sessions``: app_id and title required; context {} and items [] by default."""
    f = request_fields(models.SessionIn, body, "session")
    return SessionRequest(f["app_id"], f["title"], f.get("context", {}), f.get("items", ()))


def session_update(body: Any) -> SessionRequest:
    """``PUT /v1/sessions/{id}``: any of title, context, items (app_id, if given, must match)."""
    f = request_fields(models.SessionUpdate, body, "session")
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
    f = request_fields(models.Pair, body, "pair")
    return PairRequest(f["invite"], f.get("server"), f.get("fingerprint"), f.get("name"))


def app_request(body: Any) -> tuple[str, tuple[str, ...]]:
    """``POST /v1/apps``: ``{"app_id", "launch": [argv...]}``."""
    f = request_fields(answers.App, body, "app")
    return f["app_id"], f["launch"]


def empty_request(body: Any, what: str) -> None:
    """A body that must be empty or ``{}``."""
    request_fields(models.Empty, body, what)


def check_session_id(text: str) -> str:
    """A session id from a URL; 404 session-not-found if it cannot be one."""
    if not SESSION_ID_RE.fullmatch(text):
        raise _err("session-not-found", "no such session", 404)
    return text
