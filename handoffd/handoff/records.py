"""Handoff records: the only writer of a handoff's state, with the states and their
transitions as a table (an illegal transition is a bug: it raises ``IllegalTransitionError``),
the ``handoff.state`` / ``handoff.progress`` events, and the API's view of a handoff."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypedDict, Unpack

from handoffd.errors import HandoffError, NotFoundError, ProtocolError, StoreError
from handoffd.events import EventBus
from handoffd.handoff.offer import check_handoff_id
from handoffd.handoff.tables import EngineDB, HandoffMeta
from handoffd.handoff.timings import Clock
from handoffd.store import HandoffRecord, Store
from handoffd.tasks import TaskSet

logger = logging.getLogger("handoffd.handoff.records")

OUT_ACTIVE = ("pending", "waiting-for-device", "connecting", "transferring", "retrying")
TERMINAL = ("resumed", "declined", "cancelled", "failed")

_ANY_OUT = frozenset({*OUT_ACTIVE, "delivered", "resumed", "declined", "cancelled", "failed"})

# (direction, from) → the states it may go to (staying in a state is always allowed).
TRANSITIONS: Mapping[tuple[str, str], frozenset[str]] = {
    ("out", "pending"): frozenset(
        {"waiting-for-device", "connecting", "cancelled", "failed", "declined", "resumed"}
    ),
    ("out", "waiting-for-device"): frozenset({"connecting", "cancelled", "failed", "resumed"}),
    ("out", "connecting"): frozenset(
        {"transferring", "delivered", "retrying", "failed", "declined", "cancelled", "resumed"}
    ),
    ("out", "transferring"): frozenset(
        {"connecting", "delivered", "retrying", "failed", "declined", "cancelled", "resumed"}
    ),
    ("out", "retrying"): frozenset({"connecting", "failed", "cancelled", "resumed"}),
    ("out", "delivered"): frozenset({"resumed"}),
    ("out", "resumed"): frozenset(),
    ("out", "declined"): frozenset({"resumed"}),
    ("out", "cancelled"): frozenset({"resumed"}),
    ("out", "failed"): frozenset({"resumed"}),
    ("in", "pending"): frozenset(
        {"transferring", "delivered", "retrying", "declined", "cancelled", "failed"}
    ),
    ("in", "transferring"): frozenset({"delivered", "retrying", "declined", "cancelled", "failed"}),
    ("in", "retrying"): frozenset({"transferring", "delivered", "declined", "cancelled", "failed"}),
    ("in", "delivered"): frozenset({"resumed", "failed"}),
    ("in", "resumed"): frozenset(),
    ("in", "declined"): frozenset({"transferring", "delivered", "failed"}),
    ("in", "cancelled"): frozenset({"transferring", "delivered", "declined", "failed"}),
    ("in", "failed"): frozenset({"transferring", "delivered", "declined"}),
}
"""A sender's handoff can become ``resumed`` from any state: the target's notice may come
after a lost ``delivered``. A receiver's record that ended may start over when the sender
offers it again."""


class HandoffUpdate(TypedDict, total=False):
    """Fields of a handoff record a flow may set."""

    state: str
    path: str
    attempts: int
    bytes_total: int
    bytes_done: int
    types: list[str]
    error: str | None


class MetaUpdate(TypedDict, total=False):
    """The engine's extra columns of a handoff a flow may set."""

    peer_name: str
    next_retry_at: float | None
    offer: bytes | None
    data_bytes: int
    channel_bytes: int
    skipped: int


class IllegalTransitionError(HandoffError):
    """A handoff was asked to move between states the table does not connect (a bug)."""

    default_code = "internal"


def check_transition(direction: str, before: str, after: str) -> None:
    """Raise IllegalTransitionError unless ``before → after`` is in TRANSITIONS."""
    if before == after:
        return
    allowed = TRANSITIONS.get((direction, before))
    if allowed is None or after not in allowed:
        raise IllegalTransitionError(f"handoff {direction} {before} → {after} is not a transition")


def error_text(code: str, message: str, reason: str | None = None) -> str:
    """The stored form of a handoff's error."""
    value = {"code": code, "message": message[:500]}
    if reason is not None and reason != code:
        value["reason"] = reason
    return json.dumps(value)


def error_json(text: str | None) -> dict[str, str] | None:
    """A stored error as the API shows it."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return {"code": "error", "message": text}
    if isinstance(value, dict):
        out = {"code": str(value.get("code", "error")), "message": str(value.get("message", ""))}
        if isinstance(value.get("reason"), str):
            out["reason"] = value["reason"]
        return out
    return {"code": "error", "message": text}


def handoff_json(record: HandoffRecord, meta: HandoffMeta) -> dict[str, Any]:
    """A handoff as ``GET /v1/handoffs/{id}`` shows it."""
    return {
        "id": record.id,
        "direction": record.direction,
        "session_id": record.session_id,
        "peer": {"device_id": record.peer, "name": meta.peer_name},
        "state": record.state,
        "path": record.path,
        "types": list(record.types),
        "bytes_done": record.bytes_done,
        "bytes_total": record.bytes_total,
        "attempts": record.attempts,
        "next_retry_at": meta.next_retry_at,
        "waiting_until": meta.next_retry_at if record.state == "waiting-for-device" else None,
        "error": error_json(record.error),
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "wire": {
            "data_bytes_sent": meta.data_bytes,
            "channel_bytes_sent": meta.channel_bytes,
            "bytes_already_held": meta.skipped,
        },
    }


class Records:
    """Reads and writes handoff records; every state change goes through ``set``."""

    def __init__(
        self,
        store: Store,
        db: EngineDB,
        events: EventBus,
        clock: Clock,
        tasks: TaskSet,
        *,
        progress_interval: float,
    ) -> None:
        self.store = store
        self.db = db
        self.events = events
        self.clock = clock
        self.tasks = tasks
        self.progress_interval = progress_interval
        self._progress_at: dict[str, float] = {}

    async def get(self, handoff_id: str) -> HandoffRecord | None:
        """The record, None if unknown."""
        return await self.store.run(self.store.get_handoff, handoff_id)

    async def require(self, handoff_id: str) -> HandoffRecord:
        """The record; NotFoundError(handoff-not-found) if the id is malformed or unknown."""
        try:
            check_handoff_id(handoff_id)
        except ProtocolError:
            raise NotFoundError("no such handoff", code="handoff-not-found") from None
        record = await self.get(handoff_id)
        if record is None:
            raise NotFoundError("no such handoff", code="handoff-not-found")
        return record

    async def set_meta(self, handoff_id: str, **fields: Unpack[MetaUpdate]) -> None:
        """Set some of the engine's extra columns."""
        await self.store.run(self.db.set_meta, handoff_id, **fields)

    async def set(
        self,
        handoff_id: str,
        meta: MetaUpdate,
        *,
        first: Callable[[], object] | None = None,
        **fields: Unpack[HandoffUpdate],
    ) -> HandoffRecord:
        """Update a record (and its extra columns); a state change is checked and announced.
        ``first`` (blocking: it runs on the database thread) goes just before, in the same hop."""
        state = fields.get("state")

        def change() -> tuple[HandoffRecord | None, HandoffRecord]:
            # Read, check and write in one hop to the database thread (no change in between).
            if first is not None:
                first()
            before = self.store.get_handoff(handoff_id)
            if before is not None and isinstance(state, str):
                check_transition(before.direction, before.state, state)
            return before, self.db.update(handoff_id, meta, **fields)

        before, record = await self.store.run(change)
        if before is None or before.state != record.state:
            self.publish_state(record)
        elif record.path and before.path != record.path:
            # The transfer moved to another path (relay -> direct, direct -> lane, back).
            self.events.publish(
                {
                    "type": "handoff.path",
                    "handoff_id": record.id,
                    "direction": record.direction,
                    "path": record.path,
                }
            )
        if record.state == "delivered" or record.state in TERMINAL:
            self._progress_at.pop(handoff_id, None)  # no more progress: the limiter forgets it
        return record

    def publish_state(self, record: HandoffRecord) -> None:
        """``handoff.state`` for ``record``."""
        self.events.publish(
            {
                "type": "handoff.state",
                "handoff_id": record.id,
                "direction": record.direction,
                "state": record.state,
                "path": record.path,
                "error": error_json(record.error),
            }
        )

    def progress(self, handoff_id: str, direction: str, done: int, total: int) -> None:
        """Rate-limited (≤ 10/s per handoff) progress: an event and the record's bytes_done."""
        now = self.clock.mono()
        if done < total and now - self._progress_at.get(handoff_id, 0.0) < self.progress_interval:
            return
        self._progress_at[handoff_id] = now
        self.events.publish(
            {
                "type": "handoff.progress",
                "handoff_id": handoff_id,
                "direction": direction,
                "bytes_done": done,
                "bytes_total": total,
            }
        )
        self.tasks.spawn(self._store_progress(handoff_id, done), "progress")

    async def _store_progress(self, handoff_id: str, done: int) -> None:
        # Progress is advisory (checkpoints are what count): a full disk only delays it.
        try:
            await self.store.run(self.db.progress, handoff_id, done, self.clock.wall())
        except StoreError as exc:
            logger.debug("progress not stored error=%s", exc.code)

    async def list_json(self) -> list[dict[str, Any]]:
        """Every handoff as the API shows it."""
        records = await self.store.run(self.store.list_handoffs)
        metas = await self.store.run(self.db.all_meta)
        return [handoff_json(r, metas.get(r.id, HandoffMeta())) for r in records]

    async def get_json(self, handoff_id: str) -> dict[str, Any]:
        """One handoff as the API shows it."""
        record = await self.require(handoff_id)
        meta = await self.store.run(self.db.meta, handoff_id)
        return handoff_json(record, meta)
