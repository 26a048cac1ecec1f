"""The store's sessions and apps tables."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from handoffd.errors import StoreError
from handoffd.items import Item
from handoffd.store_base import StoreBase
from handoffd.store_migrations import SESSION_STATES
from handoffd.store_records import (
    AppRecord,
    SessionRecord,
    dumps_json,
    insert_items,
    item_from_row,
    new_session_id,
    session_from_row,
)


class SessionTables(StoreBase):
    """Published sessions (with their items) and how to launch apps."""

    def create_session(
        self, app_id: str, title: str, context: dict[str, Any], items: Sequence[Item]
    ) -> SessionRecord:
        """Store a new active session."""
        now = time.time()
        session_id = new_session_id()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO sessions (id, app_id, title, context, state, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, 'active', ?, ?)",
                (session_id, app_id, title, dumps_json(context), now, now),
            )
            insert_items(db, session_id, items)
        return self._get_session(session_id)

    def get_session(self, session_id: str) -> SessionRecord | None:
        """The session with its items' content, or None."""
        row = self._db.execute("SELECT id FROM sessions WHERE id = ?", (session_id,)).fetchone()
        return None if row is None else self._get_session(session_id)

    def _get_session(self, session_id: str) -> SessionRecord:
        row = self._db.execute(
            "SELECT id, app_id, title, context, state, created_at, updated_at"
            " FROM sessions WHERE id = ?",
            (session_id,),
        ).fetchone()
        items = self._db.execute(
            "SELECT type, name, mime, source, size, text, data, path, mtime"
            " FROM session_items WHERE session_id = ? ORDER BY idx",
            (session_id,),
        ).fetchall()
        return session_from_row(row, tuple(item_from_row(i) for i in items))

    def list_sessions(self, *, include_withdrawn: bool = False) -> list[SessionRecord]:
        """Sessions, newest first, items without content (text/data left None)."""
        rows = self._db.execute(
            "SELECT id, app_id, title, context, state, created_at, updated_at FROM sessions"
            " WHERE ? OR state != 'withdrawn' ORDER BY updated_at DESC, id",
            (include_withdrawn,),
        ).fetchall()
        items: dict[str, list[Item]] = {}
        for r in self._db.execute(
            "SELECT session_id, type, name, mime, source, size, NULL, NULL, path, mtime"
            " FROM session_items ORDER BY session_id, idx"
        ):
            items.setdefault(r[0], []).append(item_from_row(r[1:]))
        return [session_from_row(row, tuple(items.get(row[0], ()))) for row in rows]

    def update_session(
        self,
        session_id: str,
        *,
        title: str | None = None,
        context: dict[str, Any] | None = None,
        items: Sequence[Item] | None = None,
    ) -> SessionRecord:
        """Replace the given fields of an active session; StoreError if missing or not active."""
        with self.transaction() as db:
            self._require_active(session_id)
            sets: list[str] = ["updated_at = ?"]
            args: list[Any] = [time.time()]
            if title is not None:
                sets.append("title = ?")
                args.append(title)
            if context is not None:
                sets.append("context = ?")
                args.append(dumps_json(context))
            db.execute(
                f"UPDATE sessions SET {', '.join(sets)} WHERE id = ?",  # noqa: S608 - constant
                (*args, session_id),
            )
            if items is not None:
                db.execute("DELETE FROM session_items WHERE session_id = ?", (session_id,))
                insert_items(db, session_id, items)
        return self._get_session(session_id)

    def set_session_state(self, session_id: str, state: str) -> SessionRecord:
        """Move an active session to ``state``; withdrawing drops its stored content."""
        if state not in SESSION_STATES:
            raise ValueError(f"unknown session state {state!r}")
        with self.transaction() as db:
            self._require_active(session_id)
            db.execute(
                "UPDATE sessions SET state = ?, updated_at = ? WHERE id = ?",
                (state, time.time(), session_id),
            )
            if state == "withdrawn":
                db.execute(
                    "UPDATE session_items SET text = NULL, data = NULL WHERE session_id = ?",
                    (session_id,),
                )
        return self._get_session(session_id)

    def _require_active(self, session_id: str) -> None:
        row = self._db.execute("SELECT state FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            raise StoreError(f"no session {session_id}", code="session-not-found")
        if row[0] != "active":
            raise StoreError(f"session {session_id} is {row[0]}", code=f"session-{row[0]}")

    # ------------------------------------------------------------ apps

    def put_app(self, app_id: str, launch: Sequence[str]) -> AppRecord:
        """Register or replace how to launch ``app_id``."""
        now = time.time()
        self._db.execute(
            "INSERT INTO apps (app_id, launch, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (app_id) DO UPDATE SET launch = excluded.launch,"
            " updated_at = excluded.updated_at",
            (app_id, json.dumps(list(launch)), now),
        )
        return AppRecord(app_id=app_id, launch=tuple(launch), updated_at=now)

    def get_app(self, app_id: str) -> AppRecord | None:
        """The registered app, or None."""
        row = self._db.execute(
            "SELECT app_id, launch, updated_at FROM apps WHERE app_id = ?", (app_id,)
        ).fetchone()
        return None if row is None else AppRecord(row[0], tuple(json.loads(row[1])), row[2])

    def list_apps(self) -> list[AppRecord]:
        """Every registered app."""
        rows = self._db.execute("SELECT app_id, launch, updated_at FROM apps ORDER BY app_id")
        return [AppRecord(r[0], tuple(json.loads(r[1])), r[2]) for r in rows]
