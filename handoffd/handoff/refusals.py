"""Connections this device refused, for ``GET /v1/status`` and ``handoff.refused`` events.

Refusals of strangers cost an attacker nothing, so neither the list nor the event stream may
grow with them: entries are coalesced per source and code (``count``, newest ``at``; the
list keeps its bound), and events are rate-limited: per source and code at most one per
``interval`` (it carries the refusals counted since the last one), and in all at most
``burst`` per ``interval``.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

EVENT_INTERVAL = 10.0
"""Seconds between two ``handoff.refused`` events for one source and code."""
EVENT_BURST = 8
"""``handoff.refused`` events at most per EVENT_INTERVAL, all sources together."""
MAX_KEYS = 256
"""Sources and codes remembered for the event rate limit (oldest forgotten first)."""


class RefusalLog:
    """Coalesces refusals into ``entries`` (a bounded deque) and rate-limits their events."""

    def __init__(
        self,
        entries: collections.deque[dict[str, Any]],
        publish: Callable[[dict[str, Any]], object],
        *,
        interval: float = EVENT_INTERVAL,
        burst: int = EVENT_BURST,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._wall = wall
        self.entries = entries
        self._publish = publish
        self._interval = interval
        self._burst = burst
        self._clock = clock
        self._last_event: collections.OrderedDict[tuple[str, str], float] = (
            collections.OrderedDict()
        )
        self._unreported: collections.Counter[tuple[str, str]] = collections.Counter()
        self._window_start = -1e18
        self._window_events = 0

    def add(self, code: str, path: str) -> None:
        """Record one refusal of a connection that came by ``path`` (the source) with ``code``."""
        key = (path, code)
        now = self._wall()
        entry = next((e for e in self.entries if (e["path"], e["code"]) == key), None)
        if entry is None:
            entry = {"at": now, "code": code, "path": path, "count": 0}
        else:
            self.entries.remove(entry)
        entry["at"] = now
        entry["count"] += 1
        self.entries.append(entry)  # newest last
        self._unreported[key] += 1
        if len(self._unreported) > MAX_KEYS:
            del self._unreported[next(iter(self._unreported))]
        self._maybe_publish(key, code, path)

    def _maybe_publish(self, key: tuple[str, str], code: str, path: str) -> None:
        mono = self._clock()
        last = self._last_event.get(key)
        if last is not None and mono - last < self._interval:
            return
        if mono - self._window_start >= self._interval:
            self._window_start, self._window_events = mono, 0
        if self._window_events >= self._burst:
            return
        self._window_events += 1
        self._last_event[key] = mono
        self._last_event.move_to_end(key)
        while len(self._last_event) > MAX_KEYS:
            self._last_event.popitem(last=False)
        count = self._unreported.pop(key, 1)
        self._publish({"type": "handoff.refused", "code": code, "path": path, "count": count})
