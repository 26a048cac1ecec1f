"""The control API's one schema: msgspec models of every request and answer.

From these come the daemon's request checks (``body.request_fields``: the fields, which are
required, and each one's checker, attached as ``Annotated[..., Check(fn)]``), the OpenAPI
document (``openapi``: ``msgspec.json.schema_components``) and the SDK's result types
(``client``: answers decoded with ``msgspec.json.decode(..., type=Model)``).

Request models forbid unknown fields; answer models ignore them (a newer daemon may add
some). Light on purpose (msgspec and pure modules): the SDK imports it.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, UnsetType

from handoffd.control.body import Check, request_fields, string
from handoffd.control.body import api_error as _err
from handoffd.control.fieldchecks import (
    check_app_id,
    check_context,
    check_device_name,
    check_item_name,
    check_item_type,
    check_mime,
    check_title,
    types_checker,
)
from handoffd.control.limits import (
    MAX_CONTEXT,
    MAX_DATA_ITEM,
    MAX_INVITE,
    MAX_ITEMS,
    MAX_NAME_BYTES,
    MAX_PATH,
    MAX_TEXT_ITEM,
    MAX_TITLE,
    MAX_TYPES,
    MIME_RE,
)
from handoffd.items import DEFAULT_MIME, Item
from handoffd.names import APP_ID_RE, TYPE_RE

HANDOFF_STATES = (
    "pending",
    "waiting-for-device",
    "connecting",
    "transferring",
    "delivered",
    "resumed",
    "retrying",
    "declined",
    "cancelled",
    "failed",
)
SESSION_STATES = ("active", "handed-off", "withdrawn")
BASE64_RE = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
ID_PATTERN = "^[0-9a-f]{32}$"


def _anchored(pattern: str) -> str:
    return f"^{pattern}$"


# ---------------------------------------------------------------- field types

AppId = Annotated[str, Meta(pattern=_anchored(APP_ID_RE.pattern)), Check(check_app_id)]
Title = Annotated[
    str,
    Meta(max_length=MAX_TITLE, description="no control, format or line-separator character"),
    Check(check_title),
]
Context = Annotated[
    dict[str, Any],
    Meta(description=f"any JSON object of at most {MAX_CONTEXT} bytes (compact UTF-8)"),
    Check(check_context),
]
ItemType = Annotated[
    str,
    Meta(
        pattern=_anchored(TYPE_RE.pattern),
        description="message, document, clipboard, url, or an app-defined word",
    ),
    Check(check_item_type),
]
DeviceName = Annotated[
    str,
    Meta(min_length=1, max_length=64, description="no control, format or separator character"),
    Check(check_device_name),
]


class Request(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A request body: unknown fields are refused (``unknown-field``)."""


# ---------------------------------------------------------------- requests


class ItemIn(Request, frozen=True):
    """One item of a published session: exactly one of ``text``, ``data_base64``, ``path``."""

    type: ItemType
    name: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=MAX_NAME_BYTES,
            description="a file name: 1-255 UTF-8 bytes, no / \\ .. NUL or control character",
        ),
        Check(check_item_name),
    ]
    mime: Annotated[str, Meta(pattern=_anchored(MIME_RE.pattern)), Check(check_mime)] = DEFAULT_MIME
    text: (
        Annotated[str, Meta(max_length=MAX_TEXT_ITEM), Check(string(MAX_TEXT_ITEM, min_len=0))]
        | UnsetType
    ) = UNSET
    data_base64: (
        Annotated[
            str,
            Meta(
                pattern=BASE64_RE,
                description=f"at most {MAX_DATA_ITEM} bytes decoded",
                extra_json_schema={"contentEncoding": "base64"},
            ),
            Check(string(MAX_DATA_ITEM * 4 // 3 + 4, min_len=0)),
        ]
        | UnsetType
    ) = UNSET
    path: (
        Annotated[
            str,
            Meta(max_length=MAX_PATH, description="absolute path of a regular readable file"),
            Check(string(MAX_PATH)),
        ]
        | UnsetType
    ) = UNSET


def check_item(value: Any, where: str) -> Item:
    """One item of a session (content not yet read from disk: see schema.check_item_path)."""
    f = request_fields(ItemIn, value, where)
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
    """A list of at most ``MAX_ITEMS`` items with distinct names."""
    if not isinstance(value, list):
        raise _err("wrong-type", f"{where} must be a list")
    if len(value) > MAX_ITEMS:
        raise _err("too-many-items", f"{where}: at most {MAX_ITEMS} items")
    items = tuple(check_item(v, f"{where}[{i}]") for i, v in enumerate(value))
    names = [i.name for i in items]
    if len(set(names)) != len(names):
        raise _err("duplicate-item-name", f"{where}: item names must be distinct")
    return items


Items = Annotated[list[ItemIn], Meta(max_length=MAX_ITEMS), Check(check_items)]


class SessionIn(Request, frozen=True):
    """``POST /v1/sessions``: ``context`` ``{}`` and ``items`` ``[]`` by default."""

    app_id: AppId
    title: Title
    context: Context | UnsetType = UNSET
    items: Items | UnsetType = UNSET


class SessionUpdate(Request, frozen=True):
    """``PUT /v1/sessions/{id}``: the given fields are replaced (``app_id``, if given, must match)."""

    app_id: AppId | UnsetType = UNSET
    title: Title | UnsetType = UNSET
    context: Context | UnsetType = UNSET
    items: Items | UnsetType = UNSET


class Pair(Request, frozen=True):
    """``POST /v1/pair``: an invite URL, or a short code with the server (and its fingerprint)."""

    invite: Annotated[
        str,
        Meta(
            min_length=1, max_length=MAX_INVITE, description="handoff://pair?... URL or short code"
        ),
    ]
    server: (
        Annotated[
            str, Meta(min_length=1, max_length=2048, description="server URL (with a short code)")
        ]
        | UnsetType
    ) = UNSET
    fingerprint: (
        Annotated[
            str,
            Meta(min_length=1, max_length=80, description="sha256:<hex> (with a short code)"),
        ]
        | UnsetType
    ) = UNSET
    name: DeviceName | UnsetType = UNSET


class HandoffIn(Request, frozen=True):
    """``POST /v1/handoffs``."""

    session_id: Annotated[str, Meta(pattern=ID_PATTERN), Check(string(64))]
    target: Annotated[
        str, Meta(min_length=1, max_length=128, description="device id or device name")
    ]
    types: (
        Annotated[
            list[ItemType],
            Meta(max_length=MAX_TYPES, description="item types to send (default: all)"),
            Check(types_checker(MAX_TYPES)),
        ]
        | UnsetType
    ) = UNSET


class Empty(Request, frozen=True):
    """A body that must be empty or ``{}``."""
