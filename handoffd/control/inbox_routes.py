"""Control API routes of a person's inbox: the open questions (``/v1/asking``: offers waiting
for Accept / Decline) and the actions on a received entry (open with its receiver, discard)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from handoffd.control import schema
from handoffd.control.context import ControlContext
from handoffd.control.openapi import ID_PARAM, op
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
    """Add the routes and their operations."""
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


OPENAPI_PATHS: dict[str, Any] = {
    "/v1/asking": {"get": op("Offers waiting for Accept / Decline", "AskingList")},
    "/v1/asking/{id}/accept": {
        "parameters": [ID_PARAM],
        "post": op("Accept an offer: the transfer starts", "Asking", "Empty"),
    },
    "/v1/asking/{id}/decline": {
        "parameters": [ID_PARAM],
        "post": op("Decline an offer: the sender is told", "Asking", "Empty"),
    },
    "/v1/inbox/{id}/open": {
        "parameters": [ID_PARAM],
        "post": op("Open an entry with its receiver (built-in, or its app)", "InboxEntry", "Empty"),
    },
    "/v1/inbox/{id}": {
        "parameters": [ID_PARAM],
        "delete": op("Discard an entry and its files", "InboxEntry"),
    },
}
"""The routes' operations; their schemas are models (``everyday_models.Asking``...)."""
