"""Liveness of LAN peers (sans-IO: the caller supplies the time and runs the checks).

mDNS caches keep a peer that died without a goodbye for minutes (record TTLs
of 120 s and 4,500 s), so "gone" is decided here. A peer that has not been
heard from for ``stale_after`` seconds is due a check; ``misses_for_gone``
failed checks in a row, ``retry_after`` apart, make it *lost* (reported gone).
A lost peer is still re-checked every ``lost_recheck`` seconds for
``forget_after`` seconds, so one that comes back without re-announcing (a
link cut longer than the detection time) is found again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Verdict = Literal["alive", "revived", "pending", "gone", "forgotten"]


@dataclass(frozen=True, slots=True)
class LivenessPolicy:
    """Liveness timings in seconds.

    The defaults make a peer that died without a goodbye gone within 4 s of its last packet
    (``gone_within``; plus the checker's 0.5 s tick and a fast-failing TCP probe), at the
    cost of one SRV query and its answer per 2 s per silent live peer (≤ 1 packet/s per
    peer; a peer heard otherwise is not asked). Before: 10 s, 1 s, 1 s, 3 misses (16 s).
    """

    stale_after: float = 2.0
    check_timeout: float = 0.5
    retry_after: float = 0.5
    misses_for_gone: int = 2
    lost_recheck: float = 30.0
    forget_after: float = 600.0

    def __post_init__(self) -> None:
        if min(self.stale_after, self.check_timeout, self.retry_after, self.lost_recheck) <= 0:
            raise ValueError("liveness timings must be positive")
        if self.misses_for_gone < 1:
            raise ValueError("misses_for_gone must be at least 1")

    def gone_within(self) -> float:
        """Upper bound from the last packet of a dead peer to "gone" (plus the caller's tick)."""
        return self.stale_after + self.misses_for_gone * (self.check_timeout + self.retry_after)


@dataclass(slots=True)
class _State:
    last_heard: float
    next_check: float
    misses: int = 0
    lost: bool = False
    checking: bool = False


class Liveness:
    """Per-peer liveness bookkeeping; keys are device ids."""

    def __init__(self, policy: LivenessPolicy | None = None) -> None:
        self.policy = policy or LivenessPolicy()
        self._peers: dict[str, _State] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._peers

    def is_lost(self, key: str) -> bool:
        """True if ``key`` is tracked and currently reported gone."""
        state = self._peers.get(key)
        return state is not None and state.lost

    def heard(self, key: str, now: float) -> Verdict:
        """Something fresh arrived from ``key``: "revived" if it was lost, else "alive"."""
        state = self._peers.get(key)
        if state is None:
            self._peers[key] = _State(last_heard=now, next_check=now + self.policy.stale_after)
            return "alive"
        was_lost = state.lost
        state.last_heard, state.misses, state.lost = now, 0, False
        state.next_check = now + self.policy.stale_after
        return "revived" if was_lost else "alive"

    def due(self, now: float) -> list[str]:
        """Peers to check now (each is marked as being checked until ``checked``)."""
        out = []
        for key, state in self._peers.items():
            if not state.checking and state.next_check <= now:
                state.checking = True
                out.append(key)
        return out

    def checked(self, key: str, now: float, *, ok: bool) -> Verdict:
        """The result of a check of ``key``."""
        state = self._peers.get(key)
        if state is None:
            return "forgotten"
        state.checking = False
        if ok:
            return self.heard(key, now)
        policy = self.policy
        if state.lost:
            if now - state.last_heard >= policy.forget_after:
                del self._peers[key]
                return "forgotten"
            state.next_check = now + policy.lost_recheck
            return "pending"
        state.misses += 1
        if state.misses >= policy.misses_for_gone:
            state.lost = True
            state.next_check = now + policy.lost_recheck
            return "gone"
        state.next_check = now + policy.retry_after
        return "pending"

    def forget(self, key: str) -> None:
        """Stop tracking ``key``."""
        self._peers.pop(key, None)

    def next_due(self) -> float | None:
        """The earliest time a check falls due (None if nothing is tracked)."""
        times = [s.next_check for s in self._peers.values() if not s.checking]
        return min(times) if times else None
