"""The relay's limits (``RelayConfig``): defaults, ``HANDOFF_RELAY_*`` overrides, ``serve --relay-*`` flags."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ENV_PREFIX = "HANDOFF_RELAY_"


@dataclass(frozen=True)
class RelayConfig:
    """Relay limits; ``from_env`` reads ``HANDOFF_RELAY_<FIELD>`` overrides (see docs/relay.md)."""

    token_ttl: float = 30.0
    idle_timeout: float = 60.0
    max_seconds: float = 6 * 3600.0
    max_bytes: int = 16 * 1024**3
    max_per_account: int = 8
    opens_per_minute: float = 60.0
    open_burst: int = 20
    join_failures_per_minute: float = 30.0
    max_frame: int = 128 * 1024
    tap_dir: Path | None = None
    """Tests only: append every forwarded frame to ``<tap_dir>/<session>-<role>.bin``."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RelayConfig:
        """Defaults overridden by ``HANDOFF_RELAY_TOKEN_TTL``, ``..._IDLE_TIMEOUT``, ... ``..._TAP_DIR``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, kind in (
            ("token_ttl", float),
            ("idle_timeout", float),
            ("max_seconds", float),
            ("max_bytes", int),
            ("max_per_account", int),
            ("opens_per_minute", float),
            ("open_burst", int),
            ("join_failures_per_minute", float),
            ("max_frame", int),
        ):
            text = env.get(ENV_PREFIX + name.upper())
            if text:
                try:
                    value = kind(text)
                except ValueError:
                    raise ValueError(f"{ENV_PREFIX}{name.upper()} must be a number") from None
                if value <= 0:
                    raise ValueError(f"{ENV_PREFIX}{name.upper()} must be positive")
                values[name] = value
        tap = env.get(ENV_PREFIX + "TAP_DIR")
        if tap:
            values["tap_dir"] = Path(tap)
        return cls(**values)

    def with_limits(
        self,
        *,
        idle_timeout: float | None = None,
        max_bytes: int | None = None,
        max_seconds: float | None = None,
        max_per_account: int | None = None,
    ) -> RelayConfig:
        """This config with the given limits replaced (None keeps one); ValueError if not positive.

        ``handoff-server serve --relay-*`` options: they win over ``HANDOFF_RELAY_*``.
        """
        given = {
            "idle_timeout": idle_timeout,
            "max_bytes": max_bytes,
            "max_seconds": max_seconds,
            "max_per_account": max_per_account,
        }
        values: dict[str, Any] = {}
        for name, value in given.items():
            if value is None:
                continue
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"relay {name.replace('_', ' ')} must be a positive number")
            values[name] = value
        return replace(self, **values)
