"""Control API routes of published sessions (``/v1/sessions``) and registered apps (``/v1/apps``)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

from aiohttp import web

from handoffd.control import schema
from handoffd.control.context import ControlContext, context_of
from handoffd.control.responses import json_response, read_json
from handoffd.control.views import session_json
from handoffd.errors import (
    ApiError,
)
from handoffd.items import Item
from handoffd.store import SessionRecord


async def _item_records(items: Sequence[Item]) -> list[Item]:
    def build() -> list[Item]:
        out = []
        for item in items:
            if item.path is not None:
                size, mtime = schema.check_item_path(item.path)
                out.append(dataclasses.replace(item, size=size, mtime=mtime))
            else:
                out.append(item)
        return out

    if any(i.path is not None for i in items):
        return await asyncio.to_thread(build)
    return build()


def _availability(rec: SessionRecord) -> list[bool]:
    out = []
    for item in rec.items:
        if item.path is None:
            out.append(True)
            continue
        try:
            schema.check_item_path(item.path)
        except ApiError:
            out.append(False)
        else:
            out.append(True)
    return out


async def post_session(request: web.Request) -> web.Response:
    """``POST /v1/sessions``."""
    ctx = context_of(request)
    req = schema.session_create(await read_json(request))
    items = await _item_records(req.items or ())
    rec = await ctx.store.run(
        ctx.store.create_session, req.app_id or "", req.title or "", req.context or {}, items
    )
    ctx.events.publish({"type": "session.published", "session_id": rec.id, "app_id": rec.app_id})
    return json_response(session_json(rec, content=True), 201)


async def list_sessions(request: web.Request) -> web.Response:
    """``GET /v1/sessions`` (``?state=all`` includes withdrawn ones)."""
    ctx = context_of(request)
    state = request.query.get("state", "active")
    if state not in ("active", "all") or set(request.query) - {"state"}:
        raise ApiError("query: state=active|all only", code="bad-query", status=400)
    recs = await ctx.store.run(ctx.store.list_sessions, include_withdrawn=state == "all")
    return json_response({"sessions": [session_json(r) for r in recs]})


async def _get_session(ctx: ControlContext, request: web.Request) -> SessionRecord:
    session_id = schema.check_session_id(request.match_info["id"])
    rec = await ctx.store.run(ctx.store.get_session, session_id)
    if rec is None:
        raise ApiError("no such session", code="session-not-found", status=404)
    return rec


async def get_session(request: web.Request) -> web.Response:
    """``GET /v1/sessions/{id}``: with content; path items re-checked (``available``)."""
    ctx = context_of(request)
    rec = await _get_session(ctx, request)
    available = await asyncio.to_thread(_availability, rec)
    return json_response(session_json(rec, content=True, available=available))


async def put_session(request: web.Request) -> web.Response:
    """``PUT /v1/sessions/{id}``: replace the given fields of an active session."""
    ctx = context_of(request)
    rec = await _get_session(ctx, request)
    req = schema.session_update(await read_json(request))
    if req.app_id is not None and req.app_id != rec.app_id:
        raise ApiError("the session belongs to another app", code="app-id-mismatch", status=409)
    items = None if req.items is None else await _item_records(req.items)
    updated = await ctx.store.run(
        ctx.store.update_session, rec.id, title=req.title, context=req.context, items=items
    )
    ctx.events.publish({"type": "session.updated", "session_id": rec.id, "app_id": rec.app_id})
    return json_response(session_json(updated, content=True))


async def delete_session(request: web.Request) -> web.Response:
    """``DELETE /v1/sessions/{id}``: withdraw."""
    ctx = context_of(request)
    rec = await _get_session(ctx, request)
    updated = await ctx.store.run(ctx.store.set_session_state, rec.id, "withdrawn")
    ctx.events.publish({"type": "session.withdrawn", "session_id": rec.id, "app_id": rec.app_id})
    return json_response(session_json(updated))


async def post_app(request: web.Request) -> web.Response:
    """``POST /v1/apps``."""
    ctx = context_of(request)
    app_id, launch = schema.app_request(await read_json(request))
    rec = await ctx.store.run(ctx.store.put_app, app_id, launch)
    ctx.events.publish({"type": "app.registered", "app_id": app_id})
    return json_response({"app_id": rec.app_id, "launch": list(rec.launch)})


async def list_apps(request: web.Request) -> web.Response:
    """``GET /v1/apps``."""
    ctx = context_of(request)
    apps = await ctx.store.run(ctx.store.list_apps)
    return json_response({"apps": [{"app_id": a.app_id, "launch": list(a.launch)} for a in apps]})


def setup_session_routes(app: web.Application, ctx: ControlContext) -> None:
    """Add ``/v1/sessions`` and ``/v1/apps``."""
    r = app.router
    r.add_get("/v1/sessions", list_sessions)
    r.add_post("/v1/sessions", post_session)
    r.add_get("/v1/sessions/{id}", get_session)
    r.add_put("/v1/sessions/{id}", put_session)
    r.add_delete("/v1/sessions/{id}", delete_session)
    r.add_get("/v1/apps", list_apps)
    r.add_post("/v1/apps", post_app)
