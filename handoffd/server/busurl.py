"""Where the bus between instances is: ``--bus`` or ``$HANDOFF_BUS`` (no Redis import here)."""

from __future__ import annotations

import os

from handoffd.errors import ConfigError

BUS_ENV = "HANDOFF_BUS"


def bus_url(value: str | None) -> str | None:
    """``--bus`` or else ``$HANDOFF_BUS``; None (or empty) means in-process only."""
    url = value if value is not None else os.environ.get(BUS_ENV)
    if not url:
        return None
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("--bus must be a redis:// URL", code="bus-url-invalid")
    return url
