"""Composition of the server's aiohttp application: store, API, WebSocket hub, web pages.

Web pages hook: ``make_app`` calls ``setup_web(app, store, config)`` from
``handoffd.server.web`` when that module exists (or the ``web_setup`` argument,
if given). It may add routes outside ``/v1`` and reach the shared objects as
``app[STORE]``, ``app[CONFIG]``, ``app[HUB]``. Store methods are blocking:
call them with ``asyncio.to_thread``. Errors under ``/v1`` are rendered as
JSON by this module's middleware; other paths are left to the web pages.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from handoffd.errors import HandoffError, ServerError, StoreError
from handoffd.server import api, browserweb
from handoffd.server.hub import Hub
from handoffd.server.keys import (
    CONFIG,
    HUB,
    JOIN_LIMITER,
    MAX_BODY,
    STORE,
    VERIFIER,
    ServerConfig,
    error_response,
)
from handoffd.server.ratelimit import LIMITERS, TRUSTED_PROXIES, TrustedProxies, limiter_factory
from handoffd.server.relay import setup_relay
from handoffd.server.store import Store
from handoffd.wire.auth import RequestVerifier

logger = logging.getLogger("handoffd.server")
access_logger = logging.getLogger("handoffd.server.access")

__all__ = [
    "CONFIG",
    "HUB",
    "JOIN_LIMITER",
    "MAX_BODY",
    "STORE",
    "VERIFIER",
    "ServerConfig",
    "WebSetup",
    "make_app",
]

WebSetup = Callable[[web.Application, Store, ServerConfig], None]


_STATUS_CODES = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    413: "body-too-large",
    415: "unsupported-media-type",
    429: "rate-limited",
}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure under /v1 into a JSON error; log one line per request."""
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except ServerError as exc:
        status = exc.status or 400
        return error_response(status, exc.code, exc.message)
    except StoreError as exc:
        logger.error("store failure code=%s", exc.code)
        status = 503
        return error_response(503, exc.code, "the server's database is unavailable")
    except HandoffError as exc:
        status = 400
        return error_response(400, exc.code, exc.message)
    except web.HTTPException as exc:
        status = exc.status
        if exc.status < 400 or not request.path.startswith("/v1"):
            raise
        code = _STATUS_CODES.get(exc.status, "http-error")
        message = (
            exc.reason
            if exc.status != 413
            else f"body is larger than {request.app[CONFIG].max_body} bytes"
        )
        return error_response(exc.status, code, message)
    except Exception:
        logger.exception("internal error path=%s", request.path)
        status = 500
        return error_response(500, "internal", "internal server error")
    finally:
        access_logger.info(
            "request method=%s path=%s status=%s client=%s ms=%d",
            request.method,
            request.path,
            status,
            request.remote,
            (time.monotonic() - started) * 1000,
        )


def _default_web_setup() -> WebSetup | None:
    if importlib.util.find_spec("handoffd.server.web") is None:
        return None
    module = importlib.import_module("handoffd.server.web")
    setup = getattr(module, "setup_web", None)
    return setup if callable(setup) else None


def make_app(
    store: Store, config: ServerConfig, *, web_setup: WebSetup | bool | None = True
) -> web.Application:
    """The whole server as an aiohttp application (the caller owns ``store``).

    ``web_setup``: True (default) uses ``handoffd.server.web.setup_web`` if it
    exists; a callable is used instead; None/False leaves the pages out.
    """
    app = web.Application(client_max_size=config.max_body, middlewares=[_errors])
    hub = Hub(store, config.clock)
    app[STORE] = store
    app[CONFIG] = config
    app[HUB] = hub
    app[VERIFIER] = RequestVerifier()
    app[TRUSTED_PROXIES] = TrustedProxies.parse(config.trusted_proxies)
    if config.bus is not None:  # bus: imported only then (redis is an optional dependency)
        from handoffd.server.bus import setup_bus

        hub.bus = setup_bus(app, hub, config.bus)
        app[LIMITERS] = hub.bus.limiter  # every rate limit shared by the instances
    app[JOIN_LIMITER] = limiter_factory(app)(
        "join", config.join_failures_per_minute, config.join_failure_burst
    )
    api.setup_api(app)
    app.router.add_get("/v1/ws", hub.handle)
    setup_relay(app, hub, config.relay)  # relay: /v1/relay (handoffd.server.relay)

    async def background(app: web.Application) -> AsyncIterator[None]:
        watcher = asyncio.create_task(hub.watch(config.revocation_poll), name="revocation-watch")
        yield
        watcher.cancel()
        await asyncio.wait([watcher])  # our own cancellation still goes through
        if not watcher.cancelled():
            watcher.result()  # a crash of the watcher is not hidden

    async def on_shutdown(app: web.Application) -> None:
        await hub.close_all()

    app.cleanup_ctx.append(background)
    app.on_shutdown.append(on_shutdown)

    setup: Any = _default_web_setup() if web_setup is True else web_setup
    if callable(setup):
        setup(app, store, config)
    browserweb.setup_browser(app)  # the browser device's page: /pair, /app/ (docs/browser.md)
    return app
