"""The engine's tunables in one frozen dataclass, read from the environment once (by the
composition root), and the clock the engine reads time from."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from handoffd.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Timings:
    """Seconds (unless said otherwise) the engine waits, retries and bounds things by."""

    max_attempts: int = 8
    """Connection attempts of one handoff before it fails (a refusal fails it at once)."""
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    """Retry n waits base * 2**(n-1) seconds, capped at the max, jittered in its upper half."""
    connect_timeout: float = 15.0
    resumed_wait: float = 30.0
    """A sender lingers this long on a delivered exchange for the receiver's ``resumed``."""
    receiver_resumed_wait: float = 60.0
    """A receiver keeps a delivered exchange open this long for the app's ``resumed``."""
    offer_answer: float = 3660.0
    """A sender waits this long for the answer to its offer (the receiver may ask its person:
    at most consent_timeout, up to an hour)."""
    stall_timeout: float = 60.0
    """An exchange that makes no progress for this long ends (retried)."""
    warm_idle: float = 60.0
    """An idle link to a peer is kept this long for the next handoff (0: never reuse)."""
    fresh_link_grace: float = 30.0
    """A new link that carried no exchange yet is kept this long whatever warm_idle says."""
    warm_probe_timeout: float = 2.0
    """An idle warm link gets this long to answer a ping before it is reused (else a new one)."""
    janitor_interval: float = 5.0
    progress_interval: float = 0.1
    sweep_interval: float = 30.0
    notice_timeout: float = 10.0
    notice_max_delay: float = 300.0
    notice_store_retry: float = 30.0
    """Resume notices are tried again this long after the state database failed."""
    notice_after_link: float = 5.0
    """After telling the source over a link, the confirming notice waits this long."""
    shutdown_links: float = 6.0
    """Closing every link at shutdown takes at most this long."""
    device_refresh: float = 60.0
    discovery_grace: float = 5.0
    head_start: float = 0.5
    """The direct path gets this long before the relay is tried too."""
    upgrade_first: float = 5.0
    upgrade_every: float = 15.0
    """While relayed: the first try of the direct path after upgrade_first, then every ..."""
    launch_interval: float = 5.0
    """Two launches of one app are at least this far apart."""
    refused_event_interval: float = 10.0
    """Two ``handoff.refused`` events for one path and code are at least this far apart."""
    inbox_max: int = 1000
    """Received (not yet resumed) inbox entries at most (count)."""
    disk_free_cap: int = 0
    """If > 0: at most this many bytes of the disk's free space are counted (bytes)."""
    signaling_port: int = 0
    """The LAN signaling port (0: ephemeral)."""
    lane_port: int = 0
    """The LAN lane's TCP port (0: ephemeral); it listens while the signaling port does."""
    lane_min_bytes: int = 8 * 1024 * 1024
    """Bytes still to send from which a receiver offers its lane (bytes; -1: no lane at all)."""
    lane_handshake_timeout: float = 5.0
    """A lane connection that has not passed TLS, the peer checks and the token by then is closed."""
    lane_connect_timeout: float = 2.0
    """TCP connect to one offered lane address."""
    lane_dial_timeout: float = 5.0
    """The whole lane dial (every address, TLS, token)."""
    lane_hold: float = 0.3
    """A sender offered the lane waits this long for its dial before streaming on the data
    channel (seconds): the lane is usually up within milliseconds, and bulk pushed into the
    data channel meanwhile slows the dial and is sent again."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Timings:
        """The defaults overridden by ``HANDOFF_<FIELD>`` variables (ConfigError if invalid)."""
        values: dict[str, int | float] = {}
        for f in dataclasses.fields(cls):
            name = _ENV_NAMES.get(f.name, "HANDOFF_" + f.name.upper())
            raw = env.get(name, "")
            if not raw:
                continue
            kind = int if isinstance(f.default, int) else float
            try:
                values[f.name] = kind(raw)
            except ValueError:
                raise ConfigError(f"{name} is not a number: {raw!r}", code="bad-env") from None
        return cls(**values)  # type: ignore[arg-type]


# Variables whose names predate this dataclass.
_ENV_NAMES = {
    "head_start": "HANDOFF_DIRECT_HEAD_START",
    "inbox_max": "HANDOFF_INBOX_MAX",
    "disk_free_cap": "HANDOFF_DISK_FREE_CAP",
}


class Clock(Protocol):
    """Where the engine reads time: wall clock (records, envelopes) and monotonic (intervals)."""

    def wall(self) -> float:
        """Seconds since the epoch."""

    def mono(self) -> float:
        """Monotonic seconds."""


class SystemClock:
    """The real clock."""

    def wall(self) -> float:
        """``time.time()``."""
        return time.time()

    def mono(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()
