"""Control API routes of this device and its account: status, devices, pairing, invites, revocation."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

from handoffd import identity
from handoffd.control import schema
from handoffd.control.context import ControlContext, context_of
from handoffd.control.responses import json_response, read_json
from handoffd.control.views import device_json, self_device, status_json
from handoffd.devicecache import store_device_list
from handoffd.errors import (
    ApiError,
    HandoffError,
    ServerError,
)
from handoffd.serverlink import parse_invite
from handoffd.store import DeviceRecord as CachedDevice
from handoffd.wire.qr import qr_svg

logger = logging.getLogger("handoffd.control")


DEVICES_TIMEOUT = 5.0


async def get_status(request: web.Request) -> web.Response:
    """``GET /v1/status``."""
    return json_response(status_json(context_of(request)))


async def get_devices(request: web.Request) -> web.Response:
    """``GET /v1/devices``: the server's list when reachable (cached), else the cache."""
    ctx = context_of(request)
    source = "local"
    if ctx.device.paired:
        try:
            async with asyncio.timeout(DEVICES_TIMEOUT):
                records = await ctx.device.devices()
        except (ServerError, TimeoutError) as exc:
            code = exc.code if isinstance(exc, ServerError) else "server-unreachable"
            logger.info("device list from cache code=%s", code)
            source = "cache"
        else:
            await store_device_list(
                ctx.store,
                records,
                me=ctx.device.device_id,
                now=time.time(),
                publish=ctx.events.publish,
            )
            source = "server"
    devices = await ctx.store.run(ctx.store.list_devices)
    if not any(d.device_id == ctx.device.device_id for d in devices):
        devices.insert(0, self_device(ctx))
    body: dict[str, Any] = {
        "devices": [device_json(ctx, d) for d in devices],
        "source": source,
    }
    if source == "cache":
        body["server_error"] = ctx.device.server_error
    return json_response(body)


async def post_pair(request: web.Request) -> web.Response:
    """``POST /v1/pair``."""
    ctx = context_of(request)
    req = schema.pair_request(await read_json(request))
    name = ctx.settings.current.device_name
    if req.name is not None:
        await ctx.settings.update({"device_name": req.name})
        name = ctx.settings.current.device_name
    await ctx.device.pair(req.invite, server=req.server, fingerprint=req.fingerprint, name=name)
    return json_response(status_json(ctx))


async def post_invite(request: web.Request) -> web.Response:
    """``POST /v1/invites``: the QR is made here from the URL (never the server's SVG)."""
    ctx = context_of(request)
    schema.empty_request(await read_json(request), "invite")
    invite = await ctx.device.create_invite()
    try:
        parse_invite(invite.url)
    except HandoffError as exc:
        raise ServerError("the server sent a malformed invite", code="server-bad-response") from exc
    # A phone's camera opens the browser pairing page when the server gives one (docs/browser.md).
    svg = await asyncio.to_thread(qr_svg, invite.page_url or invite.url)
    return json_response(
        {
            "url": invite.url,
            "page_url": invite.page_url,
            "code": invite.code,
            "expires_at": invite.expires_at,
            "qr_svg": svg,
        }
    )


async def delete_device(request: web.Request) -> web.Response:
    """``DELETE /v1/devices/{id}``: revoke through the server."""
    ctx = context_of(request)
    try:
        device_id = identity.parse_device_id(request.match_info["id"])
    except HandoffError:
        raise ApiError("not a device id", code="bad-device-id", status=400) from None
    await ctx.device.revoke(device_id)
    await ctx.store.run(ctx.store.mark_device_revoked, device_id)
    ctx.events.publish({"type": "device.revoked", "device_id": device_id})
    devices = await ctx.store.run(ctx.store.list_devices)
    known = next((d for d in devices if d.device_id == device_id), None)
    if known is None:
        known = CachedDevice(
            device_id=device_id,
            name="",
            platform="",
            revoked=True,
            online=False,
            last_seen=None,
            created_at=None,
            updated_at=0.0,
        )
    return json_response({"device": device_json(ctx, known)})


def setup_device_routes(app: web.Application, ctx: ControlContext) -> None:
    """Add ``/v1/status``, ``/v1/devices``, ``/v1/pair`` and ``/v1/invites``."""
    r = app.router
    r.add_get("/v1/status", get_status)
    r.add_get("/v1/devices", get_devices)
    r.add_delete("/v1/devices/{id}", delete_device)
    r.add_post("/v1/pair", post_pair)
    r.add_post("/v1/invites", post_invite)
