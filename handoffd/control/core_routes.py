"""The control API's core routes: settings, the event stream, the OpenAPI document, and the device and session groups."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from aiohttp import web

from handoffd.control.account_routes import rename_at_server, setup_account_routes
from handoffd.control.context import ControlContext, context_of
from handoffd.control.device_routes import setup_device_routes
from handoffd.control.openapi import openapi_document
from handoffd.control.responses import json_response, read_json
from handoffd.control.session_routes import setup_session_routes


async def get_settings(request: web.Request) -> web.Response:
    """``GET /v1/settings``."""
    return json_response(context_of(request).settings.current.to_json())


async def patch_settings(request: web.Request) -> web.Response:
    """``PATCH /v1/settings``: validated, persisted, in force at once."""
    ctx = context_of(request)
    body = await read_json(request)
    updated = await ctx.settings.update(body)
    if "device_name" in body:
        await rename_at_server(ctx, updated.device_name)
    ctx.events.publish({"type": "settings.changed", "changed": sorted(body)})
    return json_response(updated.to_json())


async def get_events(request: web.Request) -> web.StreamResponse:
    """``GET /v1/events``: NDJSON until the client or the daemon goes away."""
    ctx = context_of(request)
    sub = ctx.events.subscribe()
    resp = web.StreamResponse(
        headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-store"}
    )
    try:
        await resp.prepare(request)
        await resp.write(_line({"type": "heartbeat", "ts": time.time()}))
        while True:
            try:
                async with asyncio.timeout(ctx.heartbeat):
                    event = await sub.get()
            except TimeoutError:
                await resp.write(_line({"type": "heartbeat", "ts": time.time()}))
                continue
            if event is None:
                break
            await resp.write(_line(event))
    except (ConnectionResetError, ConnectionError):
        pass
    finally:
        sub.close()
    with contextlib.suppress(ConnectionError):
        await resp.write_eof()
    return resp


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"


async def get_openapi(request: web.Request) -> web.Response:
    """``GET /v1/openapi.json``."""
    ctx = context_of(request)
    return json_response(openapi_document(ctx.version, ctx.openapi_paths))


def setup_core_routes(app: web.Application, ctx: ControlContext) -> None:
    """The core routes (device and session groups, settings, events, OpenAPI)."""
    setup_device_routes(app, ctx)
    setup_account_routes(app, ctx)
    setup_session_routes(app, ctx)
    r = app.router
    r.add_get("/v1/settings", get_settings)
    r.add_patch("/v1/settings", patch_settings)
    r.add_get("/v1/events", get_events)
    r.add_get("/v1/openapi.json", get_openapi)
