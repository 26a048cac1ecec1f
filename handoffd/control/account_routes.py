"""Control API routes that end or change this device's membership: ``POST /v1/unpair``; and the
device's new name told to the server (``rename_at_server``, called when ``device_name`` changes)."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from handoffd.control import schema
from handoffd.control.context import ControlContext, context_of
from handoffd.control.openapi import op
from handoffd.control.responses import json_response, read_json
from handoffd.control.views import status_json
from handoffd.errors import HandoffError

logger = logging.getLogger("handoffd.control")

RENAME_TIMEOUT = 5.0

OPENAPI_PATHS = {
    "/v1/unpair": {
        "post": op(
            "Forget the account (revoked at the server first when it can be reached)",
            "Unpaired",
            "Empty",
        )
    }
}
"""The route's operation; its schemas are models (``everyday_models.Unpaired``)."""


async def rename_at_server(ctx: ControlContext, name: str) -> None:
    """Best effort: the server's record gets ``name`` now (else at the next device refresh)."""
    if not ctx.device.paired or ctx.device.revoked:
        return
    try:
        async with asyncio.timeout(RENAME_TIMEOUT):
            await ctx.device.rename(name)
    except (HandoffError, TimeoutError) as exc:
        logger.info("name not sent to the server code=%s", getattr(exc, "code", "timeout"))


async def post_unpair(request: web.Request) -> web.Response:
    """``POST /v1/unpair``: the device forgets its account and can pair again."""
    ctx = context_of(request)
    schema.empty_request(await read_json(request), "unpair")
    at_server = await ctx.device.unpair()
    await ctx.store.run(ctx.store.replace_devices, [])
    return json_response({**status_json(ctx), "revoked_at_server": at_server})


def setup_account_routes(app: web.Application, ctx: ControlContext) -> None:
    """Add ``POST /v1/unpair`` and its operation."""
    app.router.add_post("/v1/unpair", post_unpair)
    ctx.openapi_paths.update(OPENAPI_PATHS)
