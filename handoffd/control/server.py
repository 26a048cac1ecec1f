"""The control API server: aiohttp on a Unix socket, peers of another uid refused first.

The socket lives in a 0700 directory and is itself 0600; on top of that,
every accepted connection's peer uid is read with ``SO_PEERCRED`` (Linux) or
``LOCAL_PEERCRED`` (macOS) in ``connection_made``, before a byte of the request
is read, and a connection from another uid is aborted there.

Other modules add routes through ``make_app(ctx, route_setups=[...])``: each
setup gets the ``web.Application`` and the ``ControlContext`` and may add
routes, OpenAPI paths (``ctx.openapi_paths``) and cleanup hooks. Errors raised
as ``ApiError`` / ``HandoffError`` become ``{"error": {"code", "message"}}``
(``responses.error_middleware``). The core routes are in ``core_routes``,
``device_routes`` and ``session_routes``; the shared context in ``context``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

from aiohttp import web

from handoffd.control import schema
from handoffd.control.context import CTX, HEARTBEAT, REFUSALS_KEPT, ControlContext, RouteSetup
from handoffd.control.core_routes import setup_core_routes
from handoffd.control.responses import error_middleware, error_response, json_response, read_json
from handoffd.peercred import peer_uid

__all__ = [
    "CTX",
    "HEARTBEAT",
    "REFUSALS_KEPT",
    "ControlContext",
    "ControlServer",
    "PeerCheckedUnixSite",
    "RouteSetup",
    "bind_control_socket",
    "error_middleware",
    "error_response",
    "json_response",
    "make_app",
    "read_json",
]

logger = logging.getLogger("handoffd.control")


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
