"""Control API routes of a person's inbox: the open questions (``/v1/asking``: offers waiting
for Accept / Decline) and the actions on a received entry (open with its receiver, discard)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from handoffd.control import schema
from handoffd.control.context import ControlContext
from handoffd.control.responses import json_response, read_json
from handoffd.errors import ApiError

if TYPE_CHECKING:
    from handoffd.handoff.engine import Engine


def _id(request: web.Request) -> str:
    value = request.match_info["id"]
    if len(value) != 32 or not set(value) <= set("0123456789abcdef"):
        raise ApiError("no such entry", code="not-found", status=404)
    return value


def setup_inbox_routes(app: web.Application, ctx: ControlContext, service: Engine) -> None:
    """Add the routes and their OpenAPI paths."""
    ops = service.inbox_ops

    async def list_asking(request: web.Request) -> web.Response:
        return json_response({"asking": [a.to_json() for a in ops.asking()]})

    async def accept(request: web.Request) -> web.Response:
        schema.empty_request(await read_json(request), "accept")
        return json_response(ops.answer(_id(request), accept=True).to_json())

    async def decline(request: web.Request) -> web.Response:
        schema.empty_request(await read_json(request), "decline")
        return json_response(ops.answer(_id(request), accept=False).to_json())

    async def open_entry(request: web.Request) -> web.Response:
        schema.empty_request(await read_json(request), "open")
        return json_response((await ops.open(_id(request))).to_json())

    async def discard_entry(request: web.Request) -> web.Response:
        return json_response((await ops.discard(_id(request))).to_json())

    r = app.router
    r.add_get("/v1/asking", list_asking)
    r.add_post("/v1/asking/{id}/accept", accept)
    r.add_post("/v1/asking/{id}/decline", decline)
    r.add_post("/v1/inbox/{id}/open", open_entry)
    r.add_delete("/v1/inbox/{id}", discard_entry)
    for path, operations in OPENAPI_PATHS.items():  # /v1/inbox/{id} has its GET already
        ctx.openapi_paths.setdefault(path, {}).update(operations)
    ctx.openapi_schemas.update(OPENAPI_SCHEMAS)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _op(summary: str, response: dict[str, Any]) -> dict[str, Any]:
    def body(s: dict[str, Any], what: str) -> dict[str, Any]:
        return {"description": what, "content": {"application/json": {"schema": s}}}

    return {
        "summary": summary,
        "responses": {
            "200": body(response, "OK"),
            "4XX": body(_ref("Error"), "error"),
            "5XX": body(_ref("Error"), "error"),
        },
    }


_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
}
_STR = {"type": "string"}
OPENAPI_SCHEMAS: dict[str, Any] = {
    "Asking": {
        "type": "object",
        "properties": {
            "id": _STR,
            "app_id": _STR,
            "title": _STR,
            "from": {
                "type": "object",
                "properties": {"device_id": _STR, "name": _STR},
                "required": ["device_id", "name"],
            },
            "items": {"type": "integer"},
            "size": {"type": "integer"},
            "state": {"enum": ["asking"]},
            "asked_at": {"type": "number"},
            "deadline": {"type": "number", "description": "declined if not answered by then"},
        },
        "required": ["id", "app_id", "title", "from", "items", "size", "state", "deadline"],
    }
}
OPENAPI_PATHS: dict[str, Any] = {
    "/v1/asking": {
        "get": _op(
            "Offers waiting for Accept / Decline",
            {
                "type": "object",
                "properties": {"asking": {"type": "array", "items": _ref("Asking")}},
            },
        )
    },
    "/v1/asking/{id}/accept": {
        "parameters": [_ID],
        "post": _op("Accept an offer: the transfer starts", _ref("Asking")),
    },
    "/v1/asking/{id}/decline": {
        "parameters": [_ID],
        "post": _op("Decline an offer: the sender is told", _ref("Asking")),
    },
    "/v1/inbox/{id}/open": {
        "parameters": [_ID],
        "post": _op("Open an entry with its receiver (built-in, or its app)", _ref("InboxEntry")),
    },
    "/v1/inbox/{id}": {
        "parameters": [_ID],
        "delete": _op("Discard an entry and its files", _ref("InboxEntry")),
    },
}
