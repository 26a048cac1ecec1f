"""The server's settings, its shared objects' app keys and the JSON error body.

What ``app`` (the composition), ``api``, ``web`` and ``relay`` all read; it
imports none of them, so they import each other in one direction only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from handoffd.server.hub import Hub
from handoffd.server.ice import IceConfig
from handoffd.server.pairing import INVITE_TTL
from handoffd.server.ratelimit import Limiter
from handoffd.server.relayconfig import RelayConfig
from handoffd.server.store import Store
from handoffd.wire.auth import RequestVerifier

__all__ = [
    "CONFIG",
    "HUB",
    "JOIN_LIMITER",
    "MAX_BODY",
    "STORE",
    "VERIFIER",
    "ServerConfig",
    "error_response",
]

MAX_BODY = 256 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """Server settings (``serve``'s options); ``clock`` is injectable for tests."""

    data_dir: Path
    public_url: str | None = None
    fingerprint: str | None = None
    invite_ttl: float = INVITE_TTL
    join_failures_per_minute: float = 10.0
    join_failure_burst: int = 10
    max_body: int = MAX_BODY
    revocation_poll: float = 1.0
    trusted_proxies: tuple[str, ...] = ()  # reverse proxies whose X-Forwarded-For is believed
    login_name_per_minute: float = 5.0  # web logins per account name (burst 5)
    login_address_per_minute: float = 10.0  # web logins per client address (burst 10)
    invites_per_minute: float = 6.0  # invites made per device/web session and per account
    clock: Callable[[], float] = field(default=time.time)
    relay: RelayConfig = field(default_factory=RelayConfig.from_env)  # relay limits
    ice: IceConfig = field(default_factory=IceConfig)  # STUN/TURN servers for /v1/ice
    bus: str | None = None  # redis:// URL: several instances (handoffd.server.bus)


STORE: web.AppKey[Store] = web.AppKey("handoff_store", Store)
CONFIG: web.AppKey[ServerConfig] = web.AppKey("handoff_config", ServerConfig)
HUB: web.AppKey[Hub] = web.AppKey("handoff_hub", Hub)
VERIFIER: web.AppKey[RequestVerifier] = web.AppKey("handoff_verifier", RequestVerifier)
JOIN_LIMITER: web.AppKey[Limiter] = web.AppKey("handoff_join_limiter", Limiter)


def error_response(status: int, code: str, message: str) -> web.Response:
    """The JSON error body every ``/v1`` failure uses."""
    return web.json_response({"error": {"code": code, "message": message}}, status=status)
