"""Control API route ``POST /v1/send``: hand files, folders, a text, a URL or the clipboard's
text to a device in one call (the daemon builds the session and starts the handoff)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web

from handoffd.control.context import ControlContext
from handoffd.control.everyday_models import send_request
from handoffd.control.openapi import op
from handoffd.control.responses import json_response, read_json
from handoffd.handoff import sendables
from handoffd.handoff.sendables import Sendable

if TYPE_CHECKING:
    from handoffd.handoff.engine import Engine


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
    """Add ``POST /v1/send`` and its operation."""

    async def post_send(request: web.Request) -> web.Response:
        target, kind, value = send_request(await read_json(request))
        content = await build(ctx, kind, value)
        record = await service.send_content(content, target)
        return json_response(await service.get_handoff(record.id), 202)

    app.router.add_post("/v1/send", post_send)
    ctx.openapi_paths.update(OPENAPI_PATHS)


OPENAPI_PATHS: dict[str, Any] = {
    "/v1/send": {
        "post": op(
            "Hand files, folders, a text, a URL or clipboard text to a device",
            "Handoff",
            "SendIn",
            status="202",
        )
    }
}
"""The route's operation; its schemas are models (``everyday_models.SendIn``, ``Handoff``)."""
