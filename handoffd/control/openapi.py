"""The control API's OpenAPI 3.1 document, generated: the schemas from the models (``models``,
through ``msgspec.json.schema_components``), the operations listed here.

Route setups add their operations with ``op`` (``ctx.openapi_paths``); their schemas are
models too (``models.MODELS``).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from typing import Any

import msgspec

from handoffd.control import answers, everyday_models, models
from handoffd.control.models import ID_PATTERN
from handoffd.names import APP_ID_RE

REF = "#/components/schemas/{name}"
# Models whose class name is not their name in the document.
RENAMED = {"SessionItem": "Item", "SettingsFields": "Settings"}
# What JSON Schema says and a msgspec type cannot: one content source per item.
EXTRA = {
    "ItemIn": {
        "oneOf": [{"required": ["text"]}, {"required": ["data_base64"]}, {"required": ["path"]}]
    }
}


def ref(name: str) -> dict[str, str]:
    """A reference to the component ``name``."""
    return {"$ref": REF.format(name=name)}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {"4XX": _json(ref("Error"), "error"), "5XX": _json(ref("Error"), "error")}
ID_PARAM = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": ID_PATTERN},
}


def op(
    summary: str, answer: str, body: str | None = None, *, status: str = "200"
) -> dict[str, Any]:
    """An operation answering the model ``answer`` (and taking the model ``body``)."""
    out: dict[str, Any] = {"summary": summary, "responses": {status: _json(ref(answer)), **ERRORS}}
    if body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref(body)}},
        }
    return out


def _rename(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _rename(v) for k, v in node.items()}
        target = out.get("$ref")
        if isinstance(target, str):
            name = target.rsplit("/", 1)[-1]
            out["$ref"] = REF.format(name=RENAMED.get(name, name))
        return out
    if isinstance(node, list):
        return [_rename(v) for v in node]
    return node


MODELS: tuple[type[Any], ...] = (  # msgspec structs (InboxItem: a dataclass)
    answers.Error,
    answers.Status,
    answers.Device,
    answers.DeviceList,
    answers.RevokedDevice,
    answers.Invite,
    models.ItemIn,
    answers.SessionItem,
    models.SessionIn,
    models.SessionUpdate,
    answers.Session,
    answers.SessionList,
    answers.App,
    answers.AppList,
    answers.SettingsFields,
    models.Pair,
    answers.Event,
    models.Empty,
    models.HandoffIn,
    answers.Handoff,
    answers.HandoffList,
    answers.InboxItem,
    answers.InboxEntry,
    answers.InboxList,
    everyday_models.SendIn,
    everyday_models.Asking,
    everyday_models.AskingList,
    everyday_models.Unpaired,
)
"""Every model, in the document's ``components.schemas`` (route setups' models too)."""


@functools.cache
def _schemas() -> dict[str, Any]:
    _, generated = msgspec.json.schema_components(MODELS, ref_template=REF)
    components = msgspec.json.decode(msgspec.json.encode(generated))  # JSON values: () -> []
    schemas: dict[str, Any] = {}
    for name, schema in components.items():
        name = RENAMED.get(name, name)
        schemas[name] = _rename(schema) | {"title": name} | EXTRA.get(name, {})
    return schemas


def schemas() -> dict[str, Any]:
    """The document's ``components.schemas`` (a fresh copy)."""
    return copy.deepcopy(_schemas())


PATHS: dict[str, Any] = {
    "/v1/status": {"get": op("This device and daemon", "Status")},
    "/v1/devices": {"get": op("The account's devices", "DeviceList")},
    "/v1/devices/{id}": {
        "parameters": [
            {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
        "delete": op("Revoke a device", "RevokedDevice"),
    },
    "/v1/pair": {"post": op("Join an account", "Status", "Pair")},
    "/v1/invites": {"post": op("Create an invite", "Invite", "Empty")},
    "/v1/sessions": {
        "get": op("Published sessions (add ?state=all for withdrawn ones)", "SessionList")
        | {"parameters": [{"name": "state", "in": "query", "schema": {"enum": ["active", "all"]}}]},
        "post": op("Publish a session", "Session", "SessionIn", status="201"),
    },
    "/v1/sessions/{id}": {
        "parameters": [ID_PARAM],
        "get": op("One session with content", "Session"),
        "put": op("Update a session", "Session", "SessionUpdate"),
        "delete": op("Withdraw a session", "Session"),
    },
    "/v1/apps": {
        "get": op("Registered apps", "AppList"),
        "post": op("Register how to launch an app", "App", "App"),
    },
    "/v1/settings": {
        "get": op("Settings", "Settings"),
        "patch": op("Change settings", "Settings", "Settings"),
    },
    "/v1/events": {
        "get": {
            "summary": "Event stream: one JSON object per line; heartbeat lines keep it alive",
            "parameters": [
                {
                    "name": "app_id",
                    "in": "query",
                    "description": "the app listening: while connected, the daemon hands "
                    "received sessions of this app to it rather than launching a second copy",
                    "schema": {"type": "string", "pattern": "^" + APP_ID_RE.pattern + "$"},
                }
            ],
            "responses": {
                "200": {
                    "description": "NDJSON",
                    "content": {"application/x-ndjson": {"schema": ref("Event")}},
                },
                **ERRORS,
            },
        }
    },
    "/v1/openapi.json": {
        "get": {
            "summary": "This document",
            "responses": {"200": _json({"type": "object"}), **ERRORS},
        }
    },
}


def openapi_document(version: str, extra_paths: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the control API (plus the operations route setups add)."""
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
        "components": {"schemas": schemas()},
    }
