"""Control API route ``POST /v1/send``: hand files, folders, a text, a URL or the clipboard's
text to a device in one call (the daemon builds the session and starts the handoff)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web

from handoffd.control import schema
from handoffd.control.context import ControlContext
from handoffd.control.responses import json_response, read_json
from handoffd.errors import ApiError
from handoffd.handoff import sendables
from handoffd.handoff.sendables import Sendable

if TYPE_CHECKING:
    from handoffd.handoff.engine import Engine

KINDS = ("paths", "text", "url", "clipboard")
MAX_TEXT_FIELD = 2 * sendables.MAX_SEND_TEXT  # the byte limit is checked on the UTF-8 form


def _paths(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise ApiError(f"{where} must be a non-empty list of absolute paths", code="wrong-type")
    if len(value) > schema.MAX_ITEMS:
        raise ApiError(f"{where}: at most {schema.MAX_ITEMS} paths", code="too-many-files")
    return [schema.string(schema.MAX_PATH)(v, f"{where}[]") for v in value]


def send_request(body: Any) -> tuple[str, str, Any]:
    """``{"target", and one of "paths" | "text" | "url" | "clipboard"}`` → (target, kind, value)."""
    f = schema.fields(
        body,
        "send",
        {"target": schema.string(128)},
        {
            "paths": _paths,
            "text": schema.string(MAX_TEXT_FIELD, min_len=0),
            "url": schema.string(sendables.MAX_URL + 1),
            "clipboard": schema.string(MAX_TEXT_FIELD, min_len=0),
        },
    )
    given = [k for k in KINDS if k in f]
    if len(given) != 1:
        raise ApiError("send needs exactly one of paths, text, url or clipboard", code="send-what")
    return f["target"], given[0], f[given[0]]


async def build(ctx: ControlContext, kind: str, value: Any) -> Sendable:
    """The session to send; InvalidRequestError with one clear line if the input is bad."""
    if kind == "text":
        return sendables.text(value)
    if kind == "clipboard":
        return sendables.clipboard(value)
    if kind == "url":
        return sendables.url(value)
    s = ctx.settings.current
    return await asyncio.to_thread(
        sendables.files, value, max_files=s.send_max_files, max_bytes=s.send_max_bytes
    )


def setup_send_routes(app: web.Application, ctx: ControlContext, service: Engine) -> None:
    """Add ``POST /v1/send`` and its OpenAPI path."""

    async def post_send(request: web.Request) -> web.Response:
        target, kind, value = send_request(await read_json(request))
        content = await build(ctx, kind, value)
        record = await service.send_content(content, target)
        return json_response(await service.get_handoff(record.id), 202)

    app.router.add_post("/v1/send", post_send)
    ctx.openapi_paths.update(OPENAPI_PATHS)
    ctx.openapi_schemas.update(OPENAPI_SCHEMAS)


_STR = {"type": "string"}
OPENAPI_SCHEMAS: dict[str, Any] = {
    "SendIn": {
        "type": "object",
        "description": "exactly one of paths, text, url, clipboard",
        "properties": {
            "target": {"type": "string", "description": "device id or device name"},
            "paths": {
                "type": "array",
                "items": {"type": "string", "maxLength": schema.MAX_PATH},
                "minItems": 1,
                "maxItems": schema.MAX_ITEMS,
                "description": "absolute paths of files and folders (walked)",
            },
            "text": _STR,
            "url": {"type": "string", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://"},
            "clipboard": _STR,
        },
        "required": ["target"],
        "additionalProperties": False,
    }
}
OPENAPI_PATHS: dict[str, Any] = {
    "/v1/send": {
        "post": {
            "summary": "Hand files, folders, a text, a URL or clipboard text to a device",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/SendIn"}}
                },
            },
            "responses": {
                "202": {
                    "description": "the handoff started",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Handoff"}}
                    },
                },
                "4XX": {
                    "description": "error",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                },
            },
        }
    }
}
