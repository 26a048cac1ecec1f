"""The engine's tables in ``state.db``: handoff meta, checkpoints, the inbox, expiry
tombstones and pending resume notices (blocking; call through ``Store.run``)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from handoffd.store import HandoffRecord, Store

JsonObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """A received session."""

    id: str
    session_id: str
    app_id: str
    title: str
    context: JsonObject
    from_device: str
    from_name: str
    items: tuple[JsonObject, ...]
    state: str
    received_at: float
    resumed_at: float | None

    def to_json(self) -> dict[str, Any]:
        """As ``GET /v1/inbox/{id}`` shows it."""
        return {
            "id": self.id,
            "session_id": self.session_id,
            "app_id": self.app_id,
            "title": self.title,
            "context": self.context,
            "from": {"device_id": self.from_device, "name": self.from_name},
            "items": list(self.items),
            "state": self.state,
            "received_at": self.received_at,
            "resumed_at": self.resumed_at,
        }


@dataclass(frozen=True, slots=True)
class HandoffMeta:
    """The engine's extra columns of a handoff."""

    peer_name: str = ""
    next_retry_at: float | None = None
    offer: bytes | None = None
    data_bytes: int = 0
    channel_bytes: int = 0
    skipped: int = 0


_META_FIELDS = frozenset(
    {"peer_name", "next_retry_at", "offer", "data_bytes", "channel_bytes", "skipped"}
)


class EngineDB:
    """The engine's tables in ``state.db`` (migration 2 of ``store.MIGRATIONS``); blocking:
    call through ``store.run``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _exec(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self.store.transaction() as db:
            return db.execute(sql, tuple(args)).fetchall()

    # -- handoff meta

    def meta(self, handoff_id: str) -> HandoffMeta:
        """The extra columns (defaults if none)."""
        rows = self._exec(
            "SELECT peer_name, next_retry_at, offer, data_bytes, channel_bytes, skipped"
            " FROM engine_handoffs WHERE id = ?",
            (handoff_id,),
        )
        if not rows:
            return HandoffMeta()
        r = rows[0]
        return HandoffMeta(r[0], r[1], None if r[2] is None else bytes(r[2]), r[3], r[4], r[5])

    def all_meta(self) -> dict[str, HandoffMeta]:
        """Every handoff's extra columns, without offers."""
        rows = self._exec(
            "SELECT id, peer_name, next_retry_at, NULL, data_bytes, channel_bytes, skipped"
            " FROM engine_handoffs"
        )
        return {r[0]: HandoffMeta(r[1], r[2], None, r[4], r[5], r[6]) for r in rows}

    def set_meta(self, handoff_id: str, **fields: Any) -> None:
        """Set some extra columns."""
        unknown = set(fields) - _META_FIELDS
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        with self.store.transaction() as db:
            db.execute("INSERT OR IGNORE INTO engine_handoffs (id) VALUES (?)", (handoff_id,))
            if fields:
                sets = ", ".join(f"{k} = ?" for k in fields)
                db.execute(
                    f"UPDATE engine_handoffs SET {sets} WHERE id = ?",  # noqa: S608 - names checked
                    (*fields.values(), handoff_id),
                )

    def update(self, handoff_id: str, meta: Mapping[str, Any], **fields: Any) -> HandoffRecord:
        """Update the daemon's handoff row (``fields``) and the extra columns (``meta``) at once."""
        if meta:
            self.set_meta(handoff_id, **meta)
        return self.store.update_handoff(handoff_id, **fields)

    def progress(self, handoff_id: str, done: int, now: float) -> None:
        """Raise ``bytes_done`` of a transferring handoff (one statement: never after delivered)."""
        self._exec(
            "UPDATE handoffs SET bytes_done = ?, updated_at = ?"
            " WHERE id = ? AND state = 'transferring' AND bytes_done < ?",
            (done, now, handoff_id, done),
        )

    # -- checkpoints

    def checkpoints(self, handoff_id: str) -> dict[int, int]:
        """Durable offsets per item."""
        rows = self._exec(
            "SELECT idx, offset FROM engine_checkpoints WHERE handoff_id = ?", (handoff_id,)
        )
        return {int(r[0]): int(r[1]) for r in rows}

    def set_checkpoint(self, handoff_id: str, index: int, offset: int) -> None:
        """Record that item ``index`` is durable up to ``offset``."""
        self._exec(
            "INSERT INTO engine_checkpoints (handoff_id, idx, offset) VALUES (?, ?, ?)"
            " ON CONFLICT (handoff_id, idx) DO UPDATE SET offset = excluded.offset",
            (handoff_id, index, offset),
        )

    def clear_checkpoints(self, handoff_id: str) -> None:
        """Forget every checkpoint of a handoff."""
        self._exec("DELETE FROM engine_checkpoints WHERE handoff_id = ?", (handoff_id,))

    # -- inbox

    def add_inbox(self, entry: InboxEntry) -> None:
        """Record a received session (once)."""
        self._exec(
            "INSERT OR IGNORE INTO engine_inbox (id, session_id, app_id, title, context,"
            " from_device, from_name, items, state, received_at, resumed_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry.id,
                entry.session_id,
                entry.app_id,
                entry.title,
                json.dumps(entry.context, ensure_ascii=False),
                entry.from_device,
                entry.from_name,
                json.dumps(list(entry.items), ensure_ascii=False),
                entry.state,
                entry.received_at,
                entry.resumed_at,
            ),
        )

    def inbox(self, entry_id: str | None = None, *, states: Sequence[str] = ()) -> list[InboxEntry]:
        """Inbox entries (newest first), optionally one id and/or some states."""
        sql = (
            "SELECT id, session_id, app_id, title, context, from_device, from_name, items,"
            " state, received_at, resumed_at FROM engine_inbox"
        )
        where: list[str] = []
        args: list[Any] = []
        if entry_id is not None:
            where.append("id = ?")
            args.append(entry_id)
        if states:
            where.append(f"state IN ({', '.join('?' for _ in states)})")
            args.extend(states)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY received_at DESC, id"
        return [
            InboxEntry(
                id=r[0],
                session_id=r[1],
                app_id=r[2],
                title=r[3],
                context=json.loads(r[4]),
                from_device=r[5],
                from_name=r[6],
                items=tuple(json.loads(r[7])),
                state=r[8],
                received_at=r[9],
                resumed_at=r[10],
            )
            for r in self._exec(sql, args)
        ]

    def set_inbox_state(self, entry_id: str, state: str, *, resumed_at: float | None) -> None:
        """Change an entry's state."""
        self._exec(
            "UPDATE engine_inbox SET state = ?, resumed_at = COALESCE(?, resumed_at) WHERE id = ?",
            (state, resumed_at, entry_id),
        )

    # -- expiry tombstones

    def add_expired(self, handoff_id: str, kind: str, now: float) -> None:
        """Remember that ``handoff_id`` expired: it never comes back."""
        self._exec(
            "INSERT OR IGNORE INTO engine_expired (id, kind, expired_at) VALUES (?, ?, ?)",
            (handoff_id, kind, now),
        )

    def is_expired(self, handoff_id: str) -> bool:
        """True if the handoff expired here before."""
        return bool(self._exec("SELECT 1 FROM engine_expired WHERE id = ?", (handoff_id,)))

    # -- pending resume notices

    def add_notice(
        self, handoff_id: str, device_id: str, now: float, *, delay: float = 0.0
    ) -> None:
        """Persist a resume notice to send to ``device_id`` (first try after ``delay``)."""
        self._exec(
            "INSERT OR IGNORE INTO engine_notices (handoff_id, device_id, attempts, next_at,"
            " created_at) VALUES (?, ?, 0, ?, ?)",
            (handoff_id, device_id, now + delay, now),
        )

    def due_notices(self, now: float) -> list[tuple[str, str, int, float]]:
        """(handoff id, device id, attempts, created_at) of notices due now."""
        rows = self._exec(
            "SELECT handoff_id, device_id, attempts, created_at FROM engine_notices"
            " WHERE next_at <= ? ORDER BY next_at",
            (now,),
        )
        return [(r[0], r[1], int(r[2]), float(r[3])) for r in rows]

    def next_notice_at(self) -> float | None:
        """When the next notice is due."""
        rows = self._exec("SELECT MIN(next_at) FROM engine_notices")
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    def notice_retry(self, handoff_id: str, next_at: float) -> None:
        """Count a failed attempt; try again at ``next_at``."""
        self._exec(
            "UPDATE engine_notices SET attempts = attempts + 1, next_at = ? WHERE handoff_id = ?",
            (next_at, handoff_id),
        )

    def notice_done(self, handoff_id: str) -> None:
        """The source was told (or gave up)."""
        self._exec("DELETE FROM engine_notices WHERE handoff_id = ?", (handoff_id,))
