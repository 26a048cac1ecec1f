"""The server's listening sockets: connection caps from accept, TLS handshake and idle deadlines.

Each address ``serve`` listens on is a :class:`handoffd.netguard.GuardedListener`
(caps per source address and in total, counted from accept, before TLS)
served by :class:`GuardedSite`, an aiohttp site that also bounds the TLS
handshake. The HTTP side is bounded by aiohttp's keep-alive timer, which runs
from the moment a connection is up and after every response: a connection
that has not completed a request's headers within ``idle_timeout`` (it sends
nothing, or drips a header line now and then) is closed. A request being
handled, and a WebSocket, are not idle.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from handoffd import netguard
from handoffd.errors import ConfigError

logger = logging.getLogger("handoffd.server")

HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 30.0
MAX_PER_ADDRESS = 64

__all__ = [
    "GuardedSite",
    "ListenerConfig",
    "add_arguments",
    "from_args",
    "runner_options",
    "start",
]


@dataclass(frozen=True)
class ListenerConfig:
    """``serve``'s connection options; ``max_connections`` 0 means "from the descriptor limit"."""

    handshake_timeout: float = HANDSHAKE_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    max_connections: int = 0
    max_per_address: int = MAX_PER_ADDRESS

    def limits(self) -> netguard.AcceptLimits:
        """The accept caps (the total resolved against RLIMIT_NOFILE now if it is 0)."""
        total = self.max_connections or netguard.auto_max_connections()
        return netguard.AcceptLimits(
            max_connections=total,
            max_per_address=self.max_per_address,
            handshake_timeout=self.handshake_timeout,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``serve``'s connection options."""
    parser.add_argument(
        "--handshake-timeout",
        type=float,
        default=HANDSHAKE_TIMEOUT,
        metavar="SECONDS",
        help=f"close a connection whose TLS handshake takes longer (default {HANDSHAKE_TIMEOUT:g})",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=IDLE_TIMEOUT,
        metavar="SECONDS",
        help="close a connection that has not sent a whole request header this long after "
        f"connecting or after its last response (default {IDLE_TIMEOUT:g})",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=0,
        metavar="N",
        help="open connections in all (default 0: the descriptor limit less 256)",
    )
    parser.add_argument(
        "--max-connections-per-address",
        type=int,
        default=MAX_PER_ADDRESS,
        metavar="N",
        help="open connections from one IPv4 address or IPv6 /64; 0: no cap "
        f"(default {MAX_PER_ADDRESS}; behind a reverse proxy, every client is the proxy)",
    )


def from_args(args: argparse.Namespace) -> ListenerConfig:
    """The options as a ListenerConfig (ConfigError if one is out of range)."""
    config = ListenerConfig(
        handshake_timeout=args.handshake_timeout,
        idle_timeout=args.idle_timeout,
        max_connections=max(0, args.max_connections),
        max_per_address=args.max_connections_per_address,
    )
    if not config.idle_timeout > 0:
        raise ConfigError("--idle-timeout must be positive", code="bad-timeout")
    config.limits()  # validates the rest
    return config


def runner_options(config: ListenerConfig) -> dict[str, Any]:
    """Keyword arguments for ``web.AppRunner`` (passed on to aiohttp's request handler)."""
    return {"keepalive_timeout": config.idle_timeout}


class GuardedSite(web.BaseSite):
    """An aiohttp site on a guarded listening socket, with a bounded TLS handshake."""

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: netguard.GuardedListener,
        *,
        ssl_context: ssl.SSLContext | None,
        handshake_timeout: float,
        shutdown_timeout: float = 5.0,
    ) -> None:
        super().__init__(runner, shutdown_timeout=shutdown_timeout, ssl_context=ssl_context)
        self._sock = sock
        self._handshake_timeout = handshake_timeout

    @property
    def name(self) -> str:
        """``https://HOST:PORT`` of the socket."""
        host, port = self._sock.getsockname()[:2]
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"

    async def start(self) -> None:
        """Serve the socket."""
        await super().start()
        server = self._runner.server
        if server is None:  # pragma: no cover - BaseSite.start checks the runner is set up
            raise RuntimeError("the runner is not set up")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            server,
            sock=self._sock,
            ssl=self._ssl_context,
            ssl_handshake_timeout=self._handshake_timeout if self._ssl_context else None,
        )


async def start(
    runner: web.BaseRunner,
    host: str,
    port: int,
    config: ListenerConfig,
    ssl_context: ssl.SSLContext | None,
) -> netguard.ConnectionGuard:
    """Bind ``host``:``port`` guarded and serve ``runner`` on it; the guard (for its counters)."""
    limits = config.limits()
    guard = netguard.ConnectionGuard(limits, name="server", logger=logger)
    socks = netguard.bind(host, port, guard)
    try:
        for sock in socks:
            site = GuardedSite(
                runner, sock, ssl_context=ssl_context, handshake_timeout=limits.handshake_timeout
            )
            await site.start()
    except BaseException:
        for sock in socks:
            sock.close()  # idempotent: a started site's socket is closed again by its server
        raise
    logger.info(
        "connection limits max=%d per_address=%d handshake_timeout=%g idle_timeout=%g",
        limits.max_connections,
        limits.max_per_address,
        limits.handshake_timeout,
        config.idle_timeout,
    )
    return guard
