"""Control API routes of the handoff engine: ``/v1/handoffs`` and ``/v1/inbox``.

Registered through the control server's route-setup seam, with their OpenAPI
paths. Also tracks which apps are connected to the event stream
(``GET /v1/events?app_id=...``), so the engine launches an app only when none
of its clients is listening.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from handoffd.control import schema
from handoffd.control.context import ControlContext
from handoffd.control.models import HandoffIn
from handoffd.control.openapi import ID_PARAM, op
from handoffd.control.responses import json_response, read_json

if TYPE_CHECKING:
    from handoffd.handoff.engine import Engine


def handoff_request(body: Any) -> tuple[str, str, list[str] | None]:
    """``POST /v1/handoffs``: ``{"session_id", "target", "types"?}`` (``models.HandoffIn``)."""
    f = schema.request_fields(HandoffIn, body, "handoff")
    return schema.check_session_id(f["session_id"]), f["target"], f.get("types")


def setup_handoff_routes(app: web.Application, ctx: ControlContext, service: Engine) -> None:
    """Add the routes, the app-connection tracker and the OpenAPI paths."""

    async def post_handoff(request: web.Request) -> web.Response:
        session_id, target, types = handoff_request(await read_json(request))
        record = await service.start_handoff(session_id, target, types)
        return json_response(await service.get_handoff(record.id), 202)

    async def list_handoffs(request: web.Request) -> web.Response:
        return json_response({"handoffs": await service.list_handoffs()})

    async def get_handoff(request: web.Request) -> web.Response:
        return json_response(await service.get_handoff(request.match_info["id"]))

    async def cancel_handoff(request: web.Request) -> web.Response:
        schema.empty_request(await read_json(request), "cancel")
        record = await service.cancel(request.match_info["id"])
        return json_response(await service.get_handoff(record.id))

    async def list_inbox(request: web.Request) -> web.Response:
        return json_response({"inbox": [e.to_json() for e in await service.inbox()]})

    async def get_inbox(request: web.Request) -> web.Response:
        return json_response((await service.inbox_entry(request.match_info["id"])).to_json())

    async def post_resumed(request: web.Request) -> web.Response:
        schema.empty_request(await read_json(request), "resumed")
        entry = await service.confirm_resumed(request.match_info["id"])
        return json_response(entry.to_json())

    @web.middleware
    async def track_apps(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Count event-stream clients per ``app_id`` while they are connected."""
        app_id = request.query.get("app_id")
        if request.path != "/v1/events" or app_id is None:
            return await handler(request)
        schema.check_app_id(app_id, "app_id")
        service.app_clients[app_id] += 1
        try:
            return await handler(request)
        finally:
            service.app_clients[app_id] -= 1
            if service.app_clients[app_id] <= 0:
                del service.app_clients[app_id]

    app.middlewares.append(track_apps)
    r = app.router
    r.add_post("/v1/handoffs", post_handoff)
    r.add_get("/v1/handoffs", list_handoffs)
    r.add_get("/v1/handoffs/{id}", get_handoff)
    r.add_post("/v1/handoffs/{id}/cancel", cancel_handoff)
    r.add_get("/v1/inbox", list_inbox)
    r.add_get("/v1/inbox/{id}", get_inbox)
    r.add_post("/v1/inbox/{id}/resumed", post_resumed)
    ctx.openapi_paths.update(OPENAPI_PATHS)


# ---------------------------------------------------------------- OpenAPI

OPENAPI_PATHS: dict[str, Any] = {
    "/v1/handoffs": {
        "get": op("Handoffs in both directions", "HandoffList"),
        "post": op("Start a handoff", "Handoff", "HandoffIn", status="202"),
    },
    "/v1/handoffs/{id}": {"parameters": [ID_PARAM], "get": op("One handoff", "Handoff")},
    "/v1/handoffs/{id}/cancel": {
        "parameters": [ID_PARAM],
        "post": op("Cancel a handoff not yet delivered", "Handoff", "Empty"),
    },
    "/v1/inbox": {"get": op("Received sessions", "InboxList")},
    "/v1/inbox/{id}": {"parameters": [ID_PARAM], "get": op("One received session", "InboxEntry")},
    "/v1/inbox/{id}/resumed": {
        "parameters": [ID_PARAM],
        "post": op("The app resumed the session; the source is told", "InboxEntry", "Empty"),
    },
}
"""The routes' operations; their schemas are models (``models.Handoff``, ``InboxEntry``...)."""
