"""The liveness bookkeeping (pure, driven by explicit times)."""

from __future__ import annotations

import pytest

from handoffd.discovery.liveness import Liveness, LivenessPolicy

POLICY = LivenessPolicy(
    stale_after=10, check_timeout=1, retry_after=1, misses_for_gone=3, lost_recheck=30,
    forget_after=600,
)  # fmt: skip


def test_fresh_peer_is_not_checked_until_stale() -> None:
    live = Liveness(POLICY)
    assert live.heard("p", 0) == "alive"
    assert live.due(9.9) == []
    assert live.due(10) == ["p"]
    assert live.due(11) == []  # being checked already
    assert live.checked("p", 11, ok=True) == "alive"
    assert live.due(20) == []
    assert live.due(21) == ["p"]


def test_heard_resets_the_clock_and_misses() -> None:
    live = Liveness(POLICY)
    live.heard("p", 0)
    assert live.due(10) == ["p"]
    assert live.checked("p", 11, ok=False) == "pending"
    assert live.due(11.5) == []
    assert live.due(12) == ["p"]
    assert live.heard("p", 12.5) == "alive"
    assert live.checked("p", 13, ok=False) == "pending"  # a miss after being heard starts over
    assert live.due(14) == ["p"]
    assert live.checked("p", 15, ok=False) == "pending"
    assert live.due(16) == ["p"]
    assert live.checked("p", 17, ok=False) == "gone"


def test_misses_make_gone_within_the_bound_then_rechecks_and_revives() -> None:
    live = Liveness(POLICY)
    live.heard("p", 0)
    now, verdict = 0.0, "alive"
    while verdict != "gone":
        now += 0.5
        for key in live.due(now):
            now += POLICY.check_timeout
            verdict = live.checked(key, now, ok=False)
    assert now <= POLICY.gone_within() + 0.5
    assert live.is_lost("p")
    assert live.due(now + 29) == []
    assert live.due(now + 30) == ["p"]
    assert live.checked("p", now + 31, ok=False) == "pending"
    assert live.is_lost("p")
    assert live.heard("p", now + 40) == "revived"
    assert not live.is_lost("p")
    assert live.heard("p", now + 41) == "alive"


def test_a_lost_peer_answering_a_check_is_revived() -> None:
    live = Liveness(POLICY)
    live.heard("p", 0)
    for t in (10, 12, 14):
        assert live.due(t) == ["p"]
        live.checked("p", t + 1, ok=False)
    assert live.is_lost("p")
    assert live.due(45) == ["p"]
    assert live.checked("p", 46, ok=True) == "revived"


def test_lost_peers_are_forgotten_after_a_while() -> None:
    live = Liveness(POLICY)
    live.heard("p", 0)
    for t in (10.0, 12.0, 14.0):
        live.due(t)
        live.checked("p", t + 1, ok=False)
    t = 15.0
    verdict = "pending"
    while verdict == "pending":
        t += POLICY.lost_recheck
        assert live.due(t) == ["p"]
        verdict = live.checked("p", t, ok=False)
    assert verdict == "forgotten"
    assert t >= POLICY.forget_after
    assert "p" not in live
    assert live.checked("p", t, ok=False) == "forgotten"
    assert live.next_due() is None


def test_forget_and_next_due() -> None:
    live = Liveness(POLICY)
    live.heard("p", 0)
    live.heard("q", 5)
    assert live.next_due() == 10
    live.forget("p")
    assert live.next_due() == 15
    assert "p" not in live


def test_policy_is_validated() -> None:
    with pytest.raises(ValueError, match="positive"):
        LivenessPolicy(stale_after=0)
    with pytest.raises(ValueError, match="misses_for_gone"):
        LivenessPolicy(misses_for_gone=0)
    assert LivenessPolicy().gone_within() == 4.0
