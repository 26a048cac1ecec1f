"""Backoff delays (pure): exponential, capped, jittered in the upper half."""

from __future__ import annotations

import random


def delay(attempt: int, *, base: float, cap: float, rand: random.Random | None = None) -> float:
    """Delay before retry ``attempt`` (1-based): ``base * 2**(attempt-1)`` capped at ``cap``,
    then a uniform draw from its upper half (so synchronized peers drift apart)."""
    ceiling = min(cap, base * 2.0 ** max(0, attempt - 1))
    draw = (rand or random).uniform(0, ceiling / 2)
    return ceiling / 2 + draw
