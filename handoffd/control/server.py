"""The control API server: aiohttp on a Unix socket, peers of another uid refused first.

The socket lives in a 0700 directory and is itself 0600; on top of that,
every accepted connection's peer uid is read with ``SO_PEERCRED`` (Linux) or
``LOCAL_PEERCRED`` (macOS) in ``connection_made``, before a byte of the request
is read, and a connection from another uid is aborted there.

Other modules add routes through ``make_app(ctx, route_setups=[...])``: each
setup gets the ``web.Application`` and the ``ControlContext`` and may add
routes, OpenAPI paths (``ctx.openapi_paths``) and cleanup hooks. Errors raised
as ``ApiError`` / ``HandoffError`` become ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import dataclasses
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from handoffd import identity
from handoffd.config import SettingsFile
from handoffd.control import schema
from handoffd.devicecache import cache_records
from handoffd.devicestate import DeviceState, platform_name
from handoffd.errors import (
    ApiError,
    ConfigError,
    ConflictError,
    HandoffError,
    InvalidRequestError,
    NotFoundError,
    ServerError,
    StoreError,
)
from handoffd.events import EventBus
from handoffd.items import Item
from handoffd.paths import Paths
from handoffd.peercred import peer_uid
from handoffd.serverlink import parse_invite
from handoffd.store import DeviceRecord as CachedDevice
from handoffd.store import SessionRecord, Store
from handoffd.wire.qr import qr_svg

logger = logging.getLogger("handoffd.control")

HEARTBEAT = 15.0
REFUSALS_KEPT = 32
DEVICES_TIMEOUT = 5.0


@dataclass
class ControlContext:
    """Everything the API's handlers use; built by the daemon, shared with route setups."""

    paths: Paths
    store: Store
    events: EventBus
    device: DeviceState
    settings: SettingsFile
    version: str
    heartbeat: float = HEARTBEAT
    # device id → addresses seen on the LAN; filled by discovery.
    nearby: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # The account's devices online at the server while the engine's link is up; None otherwise.
    server_online: frozenset[str] | None = None
    # The last connections this device refused (newest last): {"at", "code", "path"}.
    refusals: collections.deque[dict[str, Any]] = field(
        default_factory=lambda: collections.deque(maxlen=REFUSALS_KEPT)
    )
    # OpenAPI paths and schemas added by route setups.
    openapi_paths: dict[str, Any] = field(default_factory=dict)
    openapi_schemas: dict[str, Any] = field(default_factory=dict)


RouteSetup = Callable[[web.Application, ControlContext], None]


CTX = web.AppKey("ctx", ControlContext)


def json_response(data: Any, status: int = 200) -> web.Response:
    """A compact JSON response."""
    return web.Response(
        body=json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8"),
        status=status,
        content_type="application/json",
    )


def error_response(status: int, code: str, message: str) -> web.Response:
    """``{"error": {"code", "message"}}`` with ``status``."""
    return json_response({"error": {"code": code, "message": message}}, status)


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body (bounded, strict): see schema.parse_body."""
    if request.content_length is not None and request.content_length > schema.MAX_BODY:
        raise ApiError(
            f"request body is larger than {schema.MAX_BODY} bytes",
            code="body-too-large",
            status=413,
        )
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(
            f"request body is larger than {schema.MAX_BODY} bytes",
            code="body-too-large",
            status=413,
        ) from None
    return schema.parse_body(raw)


# ---------------------------------------------------------------- errors

_STORE_STATUS = {"session-not-found": 404, "handoff-not-found": 404, "store-full": 507}
_HTTP_CODES = {
    404: "not-found",
    405: "method-not-allowed",
    413: "body-too-large",
    415: "unsupported-media-type",
}


def _server_status(exc: ServerError) -> int:
    if exc.code in ("server-unreachable", "server-offline"):
        return 503
    if 400 <= exc.status < 500:
        return 403 if exc.status == 401 else exc.status
    return 502


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn exceptions into JSON errors with stable codes."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except NotFoundError as exc:
        return error_response(404, exc.code, exc.message)
    except ConflictError as exc:
        return error_response(409, exc.code, exc.message)
    except InvalidRequestError as exc:
        return error_response(400, exc.code, exc.message)
    except ConfigError as exc:
        return error_response(400, exc.code, exc.message)
    except StoreError as exc:
        status = _STORE_STATUS.get(exc.code, 409 if exc.code.startswith("session-") else 500)
        return error_response(status, exc.code, exc.message)
    except ServerError as exc:
        return error_response(_server_status(exc), exc.code, exc.message)
    except HandoffError as exc:
        return error_response(400, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http-error")
        return error_response(exc.status, code, exc.reason)
    except Exception:
        logger.exception("control request failed method=%s path=%s", request.method, request.path)
        return error_response(500, "internal", "internal error; see the daemon's log")


# ---------------------------------------------------------------- JSON views


def item_json(item: Item, *, content: bool, available: bool | None = None) -> dict[str, Any]:
    """An item as the API shows it (content only in single-session views)."""
    out: dict[str, Any] = {
        "type": item.type,
        "name": item.name,
        "mime": item.mime,
        "size": item.size,
        "source": item.source,
    }
    if item.path is not None:
        out["path"] = item.path
    if available is not None:
        out["available"] = available
    if content and item.text is not None:
        out["text"] = item.text
    if content and item.data is not None:
        out["data_base64"] = _b64(item.data)
    return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def session_json(
    rec: SessionRecord, *, content: bool = False, available: Sequence[bool] | None = None
) -> dict[str, Any]:
    """A session as the API shows it."""
    return {
        "id": rec.id,
        "app_id": rec.app_id,
        "title": rec.title,
        "context": rec.context,
        "items": [
            item_json(i, content=content, available=None if available is None else available[n])
            for n, i in enumerate(rec.items)
        ],
        "state": rec.state,
        "created_at": rec.created_at,
        "updated_at": rec.updated_at,
    }


def status_json(ctx: ControlContext) -> dict[str, Any]:
    """``GET /v1/status``."""
    device = ctx.device
    not_after = device.cert_not_after
    return {
        "device_id": device.device_id,
        "device_id_display": identity.format_device_id(device.device_id),
        "device_name": ctx.settings.current.device_name,
        "paired": device.paired,
        "account_id": device.account_id,
        "server_url": None if device.server is None else device.server.url,
        "server_reachable": device.server_reachable,
        "handoff_enabled": ctx.settings.current.handoff_enabled,
        "cert_not_after": None if not_after is None else not_after.timestamp(),
        "crl_number": 0 if device.trust is None else device.trust.crl_number,
        "revoked": device.revoked,
        "server_connected": ctx.server_online is not None,
        "refused": list(ctx.refusals),
        "version": ctx.version,
        "pid": os.getpid(),
    }


def _device_json(ctx: ControlContext, d: CachedDevice) -> dict[str, Any]:
    addresses = ctx.nearby.get(d.device_id, ())
    return {
        "device_id": d.device_id,
        "name": d.name,
        "platform": d.platform,
        "self": d.device_id == ctx.device.device_id,
        "nearby": bool(addresses),
        "online": d.online if ctx.server_online is None else d.device_id in ctx.server_online,
        "addresses": list(addresses),
        "last_seen": d.last_seen,
        "revoked": d.revoked,
    }


def _self_device(ctx: ControlContext) -> CachedDevice:
    return CachedDevice(
        device_id=ctx.device.device_id,
        name=ctx.settings.current.device_name,
        platform=platform_name(),
        revoked=ctx.device.revoked,
        online=None,
        last_seen=None,
        created_at=None,
        updated_at=0.0,
    )


# ---------------------------------------------------------------- handlers


def _ctx(request: web.Request) -> ControlContext:
    return request.app[CTX]


async def get_status(request: web.Request) -> web.Response:
    """``GET /v1/status``."""
    return json_response(status_json(_ctx(request)))


async def get_devices(request: web.Request) -> web.Response:
    """``GET /v1/devices``: the server's list when reachable (cached), else the cache."""
    ctx = _ctx(request)
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
            cached = cache_records(records, asyncio.get_running_loop().time())
            await ctx.store.run(ctx.store.replace_devices, cached)
            source = "server"
    devices = await ctx.store.run(ctx.store.list_devices)
    if not any(d.device_id == ctx.device.device_id for d in devices):
        devices.insert(0, _self_device(ctx))
    body: dict[str, Any] = {
        "devices": [_device_json(ctx, d) for d in devices],
        "source": source,
    }
    if source == "cache":
        body["server_error"] = ctx.device.server_error
    return json_response(body)


async def post_pair(request: web.Request) -> web.Response:
    """``POST /v1/pair``."""
    ctx = _ctx(request)
    req = schema.pair_request(await read_json(request))
    name = ctx.settings.current.device_name
    if req.name is not None:
        await ctx.settings.update({"device_name": req.name})
        name = ctx.settings.current.device_name
    await ctx.device.pair(req.invite, server=req.server, fingerprint=req.fingerprint, name=name)
    return json_response(status_json(ctx))


async def post_invite(request: web.Request) -> web.Response:
    """``POST /v1/invites``: the QR is made here from the URL (never the server's SVG)."""
    ctx = _ctx(request)
    schema.empty_request(await read_json(request), "invite")
    invite = await ctx.device.create_invite()
    try:
        parse_invite(invite.url)
    except HandoffError as exc:
        raise ServerError("the server sent a malformed invite", code="server-bad-response") from exc
    svg = await asyncio.to_thread(qr_svg, invite.url)
    return json_response(
        {"url": invite.url, "code": invite.code, "expires_at": invite.expires_at, "qr_svg": svg}
    )


async def delete_device(request: web.Request) -> web.Response:
    """``DELETE /v1/devices/{id}``: revoke through the server."""
    ctx = _ctx(request)
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
    return json_response({"device": _device_json(ctx, known)})


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
    ctx = _ctx(request)
    req = schema.session_create(await read_json(request))
    items = await _item_records(req.items or ())
    rec = await ctx.store.run(
        ctx.store.create_session, req.app_id or "", req.title or "", req.context or {}, items
    )
    ctx.events.publish({"type": "session.published", "session_id": rec.id, "app_id": rec.app_id})
    return json_response(session_json(rec, content=True), 201)


async def list_sessions(request: web.Request) -> web.Response:
    """``GET /v1/sessions`` (``?state=all`` includes withdrawn ones)."""
    ctx = _ctx(request)
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
    ctx = _ctx(request)
    rec = await _get_session(ctx, request)
    available = await asyncio.to_thread(_availability, rec)
    return json_response(session_json(rec, content=True, available=available))


async def put_session(request: web.Request) -> web.Response:
    """``PUT /v1/sessions/{id}``: replace the given fields of an active session."""
    ctx = _ctx(request)
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
    ctx = _ctx(request)
    rec = await _get_session(ctx, request)
    updated = await ctx.store.run(ctx.store.set_session_state, rec.id, "withdrawn")
    ctx.events.publish({"type": "session.withdrawn", "session_id": rec.id, "app_id": rec.app_id})
    return json_response(session_json(updated))


async def post_app(request: web.Request) -> web.Response:
    """``POST /v1/apps``."""
    ctx = _ctx(request)
    app_id, launch = schema.app_request(await read_json(request))
    rec = await ctx.store.run(ctx.store.put_app, app_id, launch)
    ctx.events.publish({"type": "app.registered", "app_id": app_id})
    return json_response({"app_id": rec.app_id, "launch": list(rec.launch)})


async def list_apps(request: web.Request) -> web.Response:
    """``GET /v1/apps``."""
    ctx = _ctx(request)
    apps = await ctx.store.run(ctx.store.list_apps)
    return json_response({"apps": [{"app_id": a.app_id, "launch": list(a.launch)} for a in apps]})


async def get_settings(request: web.Request) -> web.Response:
    """``GET /v1/settings``."""
    return json_response(_ctx(request).settings.current.to_json())


async def patch_settings(request: web.Request) -> web.Response:
    """``PATCH /v1/settings``: validated, persisted, in force at once."""
    ctx = _ctx(request)
    body = await read_json(request)
    updated = await ctx.settings.update(body)
    ctx.events.publish({"type": "settings.changed", "changed": sorted(body)})
    return json_response(updated.to_json())


async def get_events(request: web.Request) -> web.StreamResponse:
    """``GET /v1/events``: NDJSON until the client or the daemon goes away."""
    ctx = _ctx(request)
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
    ctx = _ctx(request)
    return json_response(
        schema.openapi_document(ctx.version, ctx.openapi_paths, ctx.openapi_schemas)
    )


def setup_core_routes(app: web.Application, ctx: ControlContext) -> None:
    """The routes of this module."""
    r = app.router
    r.add_get("/v1/status", get_status)
    r.add_get("/v1/devices", get_devices)
    r.add_delete("/v1/devices/{id}", delete_device)
    r.add_post("/v1/pair", post_pair)
    r.add_post("/v1/invites", post_invite)
    r.add_get("/v1/sessions", list_sessions)
    r.add_post("/v1/sessions", post_session)
    r.add_get("/v1/sessions/{id}", get_session)
    r.add_put("/v1/sessions/{id}", put_session)
    r.add_delete("/v1/sessions/{id}", delete_session)
    r.add_get("/v1/apps", list_apps)
    r.add_post("/v1/apps", post_app)
    r.add_get("/v1/settings", get_settings)
    r.add_patch("/v1/settings", patch_settings)
    r.add_get("/v1/events", get_events)
    r.add_get("/v1/openapi.json", get_openapi)


def make_app(ctx: ControlContext, route_setups: Sequence[RouteSetup] = ()) -> web.Application:
    """The control API application: core routes, then each of ``route_setups``."""
    app = web.Application(middlewares=[error_middleware], client_max_size=schema.MAX_BODY)
    app[CTX] = ctx
    setup_core_routes(app, ctx)
    for setup in route_setups:
        setup(app, ctx)
    return app


# ---------------------------------------------------------------- the socket


class _PeerGate(asyncio.Protocol):
    """Checks the peer's uid on accept; hands the transport to aiohttp only if it is ours."""

    def __init__(self, factory: Callable[[], asyncio.Protocol], uid: int) -> None:
        self._factory = factory
        self._uid = uid

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        uid = peer_uid(transport.get_extra_info("socket"))
        if uid != self._uid:
            logger.warning("control connection refused peer_uid=%s", uid)
            if isinstance(transport, asyncio.WriteTransport):
                transport.abort()
            else:
                transport.close()
            return
        protocol = self._factory()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


class PeerCheckedUnixSite(web.BaseSite):
    """A Unix-socket site on an already bound socket that admits only ``uid``'s connections."""

    __slots__ = ("_sock", "_uid")

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, *, uid: int) -> None:
        super().__init__(runner)
        self._sock = sock
        self._uid = uid

    @property
    def name(self) -> str:
        """The socket's path."""
        return f"http://unix:{self._sock.getsockname()}:"

    async def start(self) -> None:
        """Listen (the socket is already bound)."""
        await super().start()
        server = self._runner.server
        if server is None:
            raise RuntimeError("runner not set up")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(
            lambda: _PeerGate(server, self._uid), sock=self._sock, backlog=self._backlog
        )


def bind_control_socket(path: Path) -> socket.socket:
    """Bind ``path`` (mode 0600) in its directory (made 0700); the caller holds the daemon lock."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale socket: the lock proves no daemon owns it
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)
        try:
            sock.bind(os.fspath(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.setblocking(False)  # noqa: FBT003
    except BaseException:
        sock.close()
        raise
    return sock


class ControlServer:
    """The control API on its socket: ``start()`` binds and listens, ``close()`` stops (idempotent)."""

    def __init__(self, app: web.Application, path: Path) -> None:
        self._app = app
        self.path = path
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Bind and accept connections (returns once the socket accepts)."""
        runner = web.AppRunner(
            self._app, access_log=None, handle_signals=False, shutdown_timeout=3.0
        )
        await runner.setup()
        self._runner = runner
        # On the loop on purpose: it sets the process-wide umask while binding; in a thread, loop
        # code could create files meanwhile under umask 0o177.
        sock = bind_control_socket(self.path)
        site = PeerCheckedUnixSite(runner, sock, uid=os.geteuid())
        await site.start()
        logger.info("control API listening socket=%s", self.path)

    async def close(self) -> None:
        """Stop accepting, finish requests, remove the socket (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        await runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self.path.unlink)
