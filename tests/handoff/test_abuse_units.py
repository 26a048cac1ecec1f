"""Unit tests of the pure parts behind issue 16's receiver hardening (real SQLite for the inbox)."""

from __future__ import annotations

import asyncio
import collections
import sys
from pathlib import Path
from typing import Any

import pytest

from handoffd.config import Settings
from handoffd.handoff.deadlines import StallWatch
from handoffd.handoff.inboxcap import inbox_full
from handoffd.handoff.launcher import Launcher, LaunchRequest
from handoffd.handoff.offer import new_handoff_id
from handoffd.handoff.policy import decide
from handoffd.handoff.refusals import RefusalLog
from handoffd.handoff.reservations import Reservations, capped
from handoffd.handoff.tables import EngineDB, InboxEntry
from handoffd.proto import messages as m
from handoffd.store import Store


def _manifest(*sizes: int) -> m.Manifest:
    items = tuple(
        m.ItemEntry(index=i, type="document", name=f"f{i}", mime="x/y", size=s, sha256=b"\0" * 32)
        for i, s in enumerate(sizes)
    )
    return m.Manifest(
        handoff_id=new_handoff_id(),
        session_id=new_handoff_id(),
        app_id="org.example",
        title="t",
        context=b"{}",
        items=items,
        sender="A" * 32,
        recipient="B" * 32,
        created_ms=0,
    )


def test_a_zero_item_offer_is_declined() -> None:
    decision = decide(_manifest(), Settings(), free_bytes=1 << 40)
    assert (decision.reason, decision.indexes) == ("no-items", ())
    assert decide(_manifest(0), Settings(), free_bytes=1 << 40, margin=0).indexes == (0,)


def test_a_full_inbox_declines() -> None:
    full = decide(_manifest(1), Settings(), free_bytes=1 << 40, inbox_full=True)
    assert full.reason == "inbox-full"
    assert decide(_manifest(1), Settings(), free_bytes=1 << 40).reason is None


def test_reservations_count_the_others_and_shrink_with_progress() -> None:
    r = Reservations()
    one, two = object(), object()
    r.reserve("h1", 600, one)
    assert r.available(1000, "h1") == 1000  # its own reservation does not count against it
    assert r.available(1000, "h2") == 400
    r.progress("h1", 100)
    assert r.available(1000, "h2") == 900
    r.release("h1", two)  # not its owner: kept
    assert r.others("h2") == 100
    r.release("h1", one)
    r.release("h1", one)  # idempotent
    assert r.others("h2") == 0
    r.progress("h1", 50)  # nothing reserved: no-op
    assert r.others("h2") == 0
    assert capped(10**12, cap=5) == 5
    assert capped(3, cap=5) == 3
    assert capped(7, cap=0) == 7


def test_stall_watch_restarts_on_a_change() -> None:
    w = StallWatch(0.0)
    w.observe(("receiving", 0), 0.0)
    assert w.quiet_for(9.0) == 9.0
    w.observe(("receiving", 0), 9.0)
    assert w.quiet_for(10.0) == 10.0
    w.observe(("receiving", 5), 10.0)
    assert w.quiet_for(12.0) == 2.0


def test_refusals_coalesce_per_path_and_code_and_events_are_rate_limited() -> None:
    entries: collections.deque[dict[str, Any]] = collections.deque(maxlen=4)
    events: list[dict[str, Any]] = []
    now = [0.0]
    log = RefusalLog(entries, events.append, interval=10.0, burst=3, clock=lambda: now[0])
    for _ in range(1000):
        log.add("envelope-malformed", "signaling")
    assert [(e["code"], e["count"]) for e in entries] == [("envelope-malformed", 1000)]
    assert [e["count"] for e in events] == [1]
    for code in ("a", "b", "c", "d", "e"):
        log.add(code, "relay")
    assert len(entries) == 4  # bounded, newest last
    assert entries[-1]["code"] == "e"
    assert len(events) == 3  # the burst: one for the first code, then a and b
    now[0] = 11.0
    log.add("envelope-malformed", "signaling")
    # After the interval, one event carries what was counted since the last one.
    assert events[-1] == {
        "type": "handoff.refused",
        "code": "envelope-malformed",
        "path": "signaling",
        "count": 1000,
    }


def test_inbox_full_counts_received_entries(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state.db")
    try:
        db = EngineDB(store)
        for state in ("received", "received", "resumed"):
            db.add_inbox(
                InboxEntry(new_handoff_id(), "s", "a", "t", {}, "P" * 32, "p", (), state, 0, None)
            )
        assert inbox_full(store, limit=2)
        assert not inbox_full(store, limit=3)
    finally:
        store.close()


async def _drain(tasks: set[asyncio.Task[Any]]) -> None:
    """Until every task (reapers, timers: each may start the next) is done."""
    async with asyncio.timeout(60):
        while tasks:
            await asyncio.wait(set(tasks))


@pytest.mark.asyncio
async def test_launcher_coalesces_while_running_and_waits_out_the_interval(tmp_path: Path) -> None:
    """Real child processes: one at a time, the newest waiting request launched after."""
    log = tmp_path / "runs"
    script = "import os,sys,time; open(sys.argv[1],'a').write(os.environ['HANDOFF_ID']+'\\n'); time.sleep(0.5)"
    tasks: set[asyncio.Task[Any]] = set()

    def spawn(coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    async def wanted(req: LaunchRequest) -> bool:
        return req.handoff_id != "dropped"

    failed: list[LaunchRequest] = []
    launcher = Launcher(spawn, still_wanted=wanted, on_failed=failed.append, interval=0.2)
    argv = [sys.executable, "-c", script, str(log)]
    results = [
        await launcher.launch("app", hid, argv, {"HANDOFF_ID": hid}) for hid in ("1", "2", "3")
    ]
    assert results == ["launched", "coalesced", "coalesced"]
    await _drain(tasks)
    assert log.read_text().split() == ["1", "3"]  # 2 was superseded by 3
    assert await launcher.launch("app", "x", ["/nonexistent/app"], {}) in ("failed", "deferred")
    await _drain(tasks)
    assert [r.handoff_id for r in failed] == ["x"]
