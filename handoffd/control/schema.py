"""Control API request validation (strict, bounded) and the OpenAPI 3.1 document.

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
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from handoffd.config import APP_ID_RE, KNOWN_TYPES, is_type_word
from handoffd.errors import ApiError
from handoffd.items import DEFAULT_MIME, Item
from handoffd.text import file_name_problem, has_non_utf8, name_problem

MAX_BODY = 16 * 1024 * 1024
MAX_CONTEXT = 64 * 1024
MAX_ITEMS = 1024
MAX_TEXT_ITEM = 1024 * 1024
MAX_DATA_ITEM = 8 * 1024 * 1024
MAX_NAME_BYTES = 255
MAX_TITLE = 256
MAX_PATH = 4096
MAX_ARGV = 64
MAX_ARG = 4096
MAX_INVITE = 2048
MAX_JSON_DEPTH = 64
MIME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}")
SESSION_ID_RE = re.compile(r"[0-9a-f]{32}")


def _err(code: str, message: str, status: int = 400) -> ApiError:
    return ApiError(message, code=code, status=status)


# ---------------------------------------------------------------- JSON


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _err("malformed-json", f"duplicate key {key!r:.60}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise _err("malformed-json", f"{name} is not JSON")


def parse_body(raw: bytes, *, max_size: int = MAX_BODY) -> dict[str, Any]:
    """The request body as a JSON object (duplicate keys, NaN and deep nesting refused)."""
    if len(raw) > max_size:
        raise _err("body-too-large", f"request body is larger than {max_size} bytes", 413)
    if not raw.strip():
        return {}
    try:
        text = raw.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise _err("malformed-json", "request body is not UTF-8") from None
    except RecursionError:
        raise _err("malformed-json", "request body is nested too deeply") from None
    except ValueError as exc:
        if isinstance(exc, ApiError):
            raise
        raise _err("malformed-json", f"request body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise _err("not-an-object", "request body must be a JSON object")
    if _depth(value) > MAX_JSON_DEPTH:
        raise _err("malformed-json", "request body is nested too deeply")
    if has_non_utf8(value):
        raise _err("not-utf8", "request body holds a string that is not UTF-8 (a lone surrogate)")
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
        raise _err("not-an-object", f"{what} must be a JSON object")
    optional = optional or {}
    for key in obj:
        if key not in required and key not in optional:
            raise _err("unknown-field", f"{what}: unknown field {key!r:.60}")
    out: dict[str, Any] = {}
    for key, check in required.items():
        if key not in obj:
            raise _err("missing-field", f"{what}: missing field {key!r}")
        out[key] = check(obj[key], f"{what}.{key}")
    for key, check in optional.items():
        if key in obj and obj[key] is not None:
            out[key] = check(obj[key], f"{what}.{key}")
    return out


def string(max_len: int, *, min_len: int = 1) -> Checker:
    """A string of ``min_len``..``max_len`` characters without NUL."""

    def check(value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise _err("wrong-type", f"{where} must be a string")
        if not min_len <= len(value) <= max_len or "\x00" in value:
            raise _err("value-invalid", f"{where} must be {min_len} to {max_len} characters")
        return value

    return check


def boolean(value: Any, where: str) -> bool:
    """A JSON boolean."""
    if not isinstance(value, bool):
        raise _err("wrong-type", f"{where} must be true or false")
    return value


def any_value(value: Any, where: str) -> Any:
    """Anything (checked later by its consumer)."""
    return value


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


# ---------------------------------------------------------------- OpenAPI


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERR = {"4XX": _json(_ref("Error"), "error"), "5XX": _json(_ref("Error"), "error")}


def _op(
    summary: str, response: dict[str, Any], body: dict[str, Any] | None = None
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": _json(response), **_ERR}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


_STR = {"type": "string"}
_NUM = {"type": "number"}
_BOOL = {"type": "boolean"}
_ITEM_TYPE = {"type": "string", "pattern": "^[a-z][a-z0-9_-]{0,31}$"}
_SESSION_ID_PARAM = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
}

SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": _obj({"code": _STR, "message": _STR}, ["code", "message"])}, ["error"]),
    "Status": _obj(
        {
            "device_id": _STR,
            "device_id_display": _STR,
            "device_name": _STR,
            "paired": _BOOL,
            "account_id": {"type": ["string", "null"]},
            "server_url": {"type": ["string", "null"]},
            "server_reachable": {"type": ["boolean", "null"]},
            "handoff_enabled": _BOOL,
            "cert_not_after": {"type": ["number", "null"]},
            "crl_number": {"type": "integer"},
            "revoked": _BOOL,
            "server_connected": _BOOL,
            "refused": {
                "type": "array",
                "description": "the last connections this device refused, newest last "
                "(coalesced per path and code: count, the newest at)",
                "items": _obj(
                    {"at": _NUM, "code": _STR, "path": _STR, "count": {"type": "integer"}},
                    ["at", "code", "path"],
                ),
            },
            "version": _STR,
            "pid": {"type": "integer"},
        }
    ),
    "Device": _obj(
        {
            "device_id": _STR,
            "name": _STR,
            "platform": _STR,
            "self": _BOOL,
            "nearby": _BOOL,
            "online": {"type": ["boolean", "null"]},
            "addresses": {"type": "array", "items": _STR},
            "last_seen": {"type": ["number", "null"]},
            "revoked": _BOOL,
        }
    ),
    "Invite": _obj({"url": _STR, "code": _STR, "expires_at": _NUM, "qr_svg": _STR}),
    "ItemIn": _obj(
        {
            "type": _ITEM_TYPE,
            "name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME_BYTES},
            "mime": {"type": "string", "default": DEFAULT_MIME},
            "text": {"type": "string", "maxLength": MAX_TEXT_ITEM},
            "data_base64": {"type": "string", "contentEncoding": "base64"},
            "path": {"type": "string", "description": "absolute path of a regular readable file"},
        },
        ["type", "name"],
    )
    | {"oneOf": [{"required": ["text"]}, {"required": ["data_base64"]}, {"required": ["path"]}]},
    "Item": _obj(
        {
            "type": _STR,
            "name": _STR,
            "mime": _STR,
            "size": {"type": "integer"},
            "source": {"enum": ["text", "data", "path"]},
            "text": _STR,
            "data_base64": _STR,
            "path": _STR,
            "available": _BOOL,
        }
    ),
    "SessionIn": _obj(
        {
            "app_id": {"type": "string", "pattern": "^" + APP_ID_RE.pattern + "$"},
            "title": {"type": "string", "maxLength": MAX_TITLE},
            "context": {"type": "object", "description": f"at most {MAX_CONTEXT} bytes"},
            "items": {"type": "array", "maxItems": MAX_ITEMS, "items": _ref("ItemIn")},
        },
        ["app_id", "title"],
    ),
    "SessionUpdate": _obj(
        {
            "app_id": _STR,
            "title": {"type": "string", "maxLength": MAX_TITLE},
            "context": {"type": "object"},
            "items": {"type": "array", "maxItems": MAX_ITEMS, "items": _ref("ItemIn")},
        }
    ),
    "Session": _obj(
        {
            "id": _STR,
            "app_id": _STR,
            "title": _STR,
            "context": {"type": "object"},
            "items": {"type": "array", "items": _ref("Item")},
            "state": {"enum": ["active", "handed-off", "withdrawn"]},
            "created_at": _NUM,
            "updated_at": _NUM,
        }
    ),
    "App": _obj(
        {
            "app_id": _STR,
            "launch": {"type": "array", "items": _STR, "minItems": 1, "maxItems": MAX_ARGV},
        },
        ["app_id", "launch"],
    ),
    "Settings": _obj(
        {
            "handoff_enabled": _BOOL,
            "accept_types": {
                "type": "array",
                "items": _STR,
                "description": '["*"] accepts every type',
            },
            "auto_accept": _BOOL,
            "device_name": {"type": "string", "minLength": 1, "maxLength": 64},
            "inbox_ttl": {"type": "integer", "minimum": 60},
            "partial_ttl": {"type": "integer", "minimum": 60},
            "unicast_peers": {"type": "array", "items": {"type": "string"}},
            "lan_discovery": {
                "type": "boolean",
                "description": "advertise and browse with mDNS (off: reach peers via the server)",
            },
        }
    ),
    "Pair": _obj(
        {
            "invite": {"type": "string", "description": "handoff://pair?... URL or short code"},
            "server": {"type": "string", "description": "server URL (with a short code)"},
            "fingerprint": {"type": "string", "description": "sha256:<hex> (with a short code)"},
            "name": {"type": "string", "maxLength": 64},
        },
        ["invite"],
    ),
    "Event": {
        "type": "object",
        "properties": {"type": _STR, "seq": {"type": "integer"}, "ts": _NUM},
        "required": ["type"],
    },
}

PATHS: dict[str, Any] = {
    "/v1/status": {"get": _op("This device and daemon", _ref("Status"))},
    "/v1/devices": {
        "get": _op(
            "The account's devices",
            _obj({"devices": {"type": "array", "items": _ref("Device")}, "source": _STR}),
        )
    },
    "/v1/devices/{id}": {
        "delete": _op("Revoke a device", _obj({"device": _ref("Device")}))
        | {"parameters": [{"name": "id", "in": "path", "required": True, "schema": _STR}]}
    },
    "/v1/pair": {"post": _op("Join an account", _ref("Status"), _ref("Pair"))},
    "/v1/invites": {"post": _op("Create an invite", _ref("Invite"), _obj({}))},
    "/v1/sessions": {
        "get": _op(
            "Published sessions (add ?state=all for withdrawn ones)",
            _obj({"sessions": {"type": "array", "items": _ref("Session")}}),
        ),
        "post": _op("Publish a session", _ref("Session"), _ref("SessionIn")),
    },
    "/v1/sessions/{id}": {
        "parameters": [_SESSION_ID_PARAM],
        "get": _op("One session with content", _ref("Session")),
        "put": _op("Update a session", _ref("Session"), _ref("SessionUpdate")),
        "delete": _op("Withdraw a session", _ref("Session")),
    },
    "/v1/apps": {
        "get": _op("Registered apps", _obj({"apps": {"type": "array", "items": _ref("App")}})),
        "post": _op("Register how to launch an app", _ref("App"), _ref("App")),
    },
    "/v1/settings": {
        "get": _op("Settings", _ref("Settings")),
        "patch": _op("Change settings", _ref("Settings"), _ref("Settings")),
    },
    "/v1/events": {
        "get": {
            "summary": "Event stream: one JSON object per line; heartbeat lines keep it alive",
            "responses": {
                "200": {
                    "description": "NDJSON",
                    "content": {"application/x-ndjson": {"schema": _ref("Event")}},
                },
                **_ERR,
            },
        }
    },
    "/v1/openapi.json": {"get": _op("This document", {"type": "object"})},
}


def openapi_document(
    version: str,
    extra_paths: Mapping[str, Any] | None = None,
    extra_schemas: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the control API (plus routes other modules add)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "handoffd control API",
            "version": version,
            "description": "HTTP/1.1 + JSON on the daemon's Unix socket; "
            "try: curl --unix-socket <sock> http://handoff/v1/status",
        },
        "servers": [{"url": "http://handoff"}],
        "paths": {**PATHS, **(extra_paths or {})},
        "components": {"schemas": {**SCHEMAS, **(extra_schemas or {})}},
    }
