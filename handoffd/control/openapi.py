"""The control API's OpenAPI 3.1 document."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from handoffd.config import APP_ID_RE
from handoffd.control.limits import (
    MAX_ARGV,
    MAX_CONTEXT,
    MAX_ITEMS,
    MAX_NAME_BYTES,
    MAX_TEXT_ITEM,
    MAX_TITLE,
    MIME_RE,
)
from handoffd.items import DEFAULT_MIME


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
    "Invite": _obj(
        {
            "url": _STR,
            "page_url": {"type": ["string", "null"]},
            "code": _STR,
            "expires_at": _NUM,
            "qr_svg": _STR,
        }
    ),
    "ItemIn": _obj(
        {
            "type": _ITEM_TYPE,
            "name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME_BYTES},
            "mime": {
                "type": "string",
                "pattern": "^" + MIME_RE.pattern + "$",
                "default": DEFAULT_MIME,
            },
            "text": {"type": "string", "maxLength": MAX_TEXT_ITEM},
            "data_base64": {
                "type": "string",
                "contentEncoding": "base64",
                "pattern": "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
            },
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
