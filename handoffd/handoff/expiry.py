"""Expiry: unclaimed inbox entries after ``inbox_ttl``, stale partial transfers after
``partial_ttl``; each leaves a tombstone so the handoff never comes back."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

from handoffd.config import SettingsFile
from handoffd.errors import HandoffError, StoreError
from handoffd.events import EventBus
from handoffd.handoff.records import check_transition, error_text
from handoffd.handoff.staging import Staging
from handoffd.handoff.tables import EngineDB
from handoffd.handoff.timings import Clock
from handoffd.store import Store

logger = logging.getLogger("handoffd.handoff.expiry")


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _fail(store: Store, handoff_id: str, message: str) -> None:
    record = store.get_handoff(handoff_id)
    if record is None:
        return
    check_transition(record.direction, record.state, "failed")
    store.update_handoff(handoff_id, state="failed", error=error_text("expired", message))


def expire(
    store: Store, db: EngineDB, staging: Staging, *, now: float, inbox_ttl: int, partial_ttl: int
) -> list[tuple[str, str]]:
    """Delete unclaimed inbox entries and stale partial transfers; tombstone them. Blocking.

    Returns ``(handoff id, kind)`` of what expired (kind ``inbox`` or ``partial``).
    """
    gone: list[tuple[str, str]] = []
    for entry in db.inbox(states=("received",)):
        if entry.received_at + inbox_ttl <= now:
            staging.discard_inbox(entry.id)
            db.add_expired(entry.id, "inbox", now)
            db.set_inbox_state(entry.id, "expired", resumed_at=None)
            try:
                _fail(store, entry.id, "not resumed before inbox_ttl")
            except StoreError as exc:
                logger.warning("expiry not recorded error=%s", exc.code)
            gone.append((entry.id, "inbox"))
    by_id = {h.id: h for h in store.list_handoffs(limit=100_000) if h.direction == "in"}
    for handoff_id in staging.partial_ids():
        record = by_id.get(handoff_id)
        if record is not None and record.state in ("delivered", "resumed"):
            staging.discard_partial(handoff_id)
            continue
        last = record.updated_at if record is not None else _mtime(staging.partial_dir(handoff_id))
        if last + partial_ttl <= now:
            staging.discard_partial(handoff_id)
            db.clear_checkpoints(handoff_id)
            db.add_expired(handoff_id, "partial", now)
            if record is not None:
                _fail(store, handoff_id, "transfer not finished before partial_ttl")
            gone.append((handoff_id, "partial"))
    return gone


class Expiry:
    """The sweep, every ``interval`` seconds."""

    def __init__(
        self,
        *,
        store: Store,
        db: EngineDB,
        staging: Staging,
        settings: SettingsFile,
        events: EventBus,
        clock: Clock,
        interval: float,
    ) -> None:
        self.store = store
        self.db = db
        self.staging = staging
        self.settings = settings
        self.events = events
        self.clock = clock
        self.interval = interval

    async def loop(self) -> None:
        """Sweep for ever."""
        while True:
            settings = self.settings.current
            try:
                gone = await self.store.run(
                    expire,
                    self.store,
                    self.db,
                    self.staging,
                    now=self.clock.wall(),
                    inbox_ttl=settings.inbox_ttl,
                    partial_ttl=settings.partial_ttl,
                )
            except (OSError, sqlite3.Error, HandoffError):
                logger.exception("expiry sweep failed")
                gone = []
            for handoff_id, kind in gone:
                logger.info("expired kind=%s", kind, extra={"handoff": handoff_id})
                self.events.publish(
                    {"type": "handoff.expired", "handoff_id": handoff_id, "kind": kind}
                )
            await asyncio.sleep(self.interval)
