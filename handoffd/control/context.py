"""What the control API's handlers share: ``ControlContext`` (built by the daemon) and its app key."""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from handoffd.config import SettingsFile
from handoffd.devicestate import DeviceState
from handoffd.events import EventBus
from handoffd.paths import Paths
from handoffd.store import Store

HEARTBEAT = 15.0
REFUSALS_KEPT = 32


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
    # OpenAPI operations added by route setups (``openapi.op``); their schemas are models.
    openapi_paths: dict[str, Any] = field(default_factory=dict)


RouteSetup = Callable[[web.Application, ControlContext], None]


CTX = web.AppKey("ctx", ControlContext)


def context_of(request: web.Request) -> ControlContext:
    """The ``ControlContext`` of ``request``'s application."""
    return request.app[CTX]
