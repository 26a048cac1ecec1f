"""Deadlines of a receiving exchange: no progress for too long, and the wait for ``resumed``.

A peer that answers pings but sends nothing would otherwise hold an accepted exchange (and its
link, its disk reservation) open for ever; a delivered session whose app never confirms would
keep the link pinging. Both end the exchange: a stall with a retryable error (what is held is
kept for the resume), a delivered one quietly (a later ``resumed`` goes by notice).
"""

from __future__ import annotations

from collections.abc import Hashable


class StallWatch:
    """Tracks a progress mark and how long it has not changed."""

    def __init__(self, now: float) -> None:
        self._mark: Hashable = None
        self._since = now

    def observe(self, mark: Hashable, now: float) -> None:
        """Record the current mark (a change restarts the clock)."""
        if mark != self._mark:
            self._mark = mark
            self._since = now

    def quiet_for(self, now: float) -> float:
        """Seconds since the mark last changed."""
        return now - self._since
