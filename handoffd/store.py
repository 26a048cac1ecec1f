"""The daemon's SQLite state (``state.db``, WAL, mode 0600): sessions, apps, handoffs, devices.

``Store`` is synchronous and owns one connection; the event loop calls it
through ``await store.run(store.method, ...)``, which runs every call on the
store's single DB thread (calls are serialized, the loop never blocks on I/O).

Schema changes are migrations: append SQL to ``MIGRATIONS``; ``PRAGMA
user_version`` records how many have run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from handoffd.errors import StoreError
from handoffd.items import Item
from handoffd.store_engine import ENGINE_TABLES

P = ParamSpec("P")
T = TypeVar("T")

SESSION_STATES = ("active", "handed-off", "withdrawn")

MIGRATIONS: tuple[str, ...] = (
    # 1: the first schema.
    """
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        app_id TEXT NOT NULL,
        title TEXT NOT NULL,
        context TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('active', 'handed-off', 'withdrawn')),
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX sessions_state ON sessions (state, updated_at);
    CREATE TABLE session_items (
        session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        type TEXT NOT NULL,
        name TEXT NOT NULL,
        mime TEXT NOT NULL,
        source TEXT NOT NULL CHECK (source IN ('text', 'data', 'path')),
        text TEXT,
        data BLOB,
        path TEXT,
        size INTEGER NOT NULL,
        mtime REAL,
        PRIMARY KEY (session_id, idx)
    );
    CREATE TABLE apps (
        app_id TEXT PRIMARY KEY,
        launch TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE handoffs (
        id TEXT PRIMARY KEY,
        direction TEXT NOT NULL CHECK (direction IN ('out', 'in')),
        session_id TEXT,
        peer TEXT NOT NULL,
        state TEXT NOT NULL,
        path TEXT,
        types TEXT NOT NULL DEFAULT '[]',
        bytes_done INTEGER NOT NULL DEFAULT 0,
        bytes_total INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX handoffs_state ON handoffs (state, updated_at);
    CREATE TABLE devices (
        device_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        platform TEXT NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0,
        online INTEGER,
        last_seen REAL,
        created_at REAL,
        updated_at REAL NOT NULL
    );
    """,
    # 2: the handoff engine's tables (IF NOT EXISTS: earlier engines made them unversioned).
    ENGINE_TABLES,
)


# ---------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A published session."""

    id: str
    app_id: str
    title: str
    context: dict[str, Any]
    state: str
    created_at: float
    updated_at: float
    items: tuple[Item, ...]


@dataclass(frozen=True, slots=True)
class AppRecord:
    """How to launch an app."""

    app_id: str
    launch: tuple[str, ...]
    updated_at: float


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A device of the account as last seen (the server's list, cached)."""

    device_id: str
    name: str
    platform: str
    revoked: bool
    online: bool | None
    last_seen: float | None
    created_at: float | None
    updated_at: float


@dataclass(frozen=True, slots=True)
class HandoffRecord:
    """A handoff in either direction (written by the transfer engine)."""

    id: str
    direction: str
    session_id: str | None
    peer: str
    state: str
    path: str | None
    types: tuple[str, ...]
    bytes_done: int
    bytes_total: int
    attempts: int
    error: str | None
    created_at: float
    updated_at: float


HANDOFF_FIELDS = frozenset(
    {"state", "path", "types", "bytes_done", "bytes_total", "attempts", "error", "session_id"}
)
_HANDOFF_COLUMNS = (
    "id, direction, session_id, peer, state, path, types, bytes_done, bytes_total, attempts,"
    " error, created_at, updated_at"
)


def new_session_id() -> str:
    """A random 128-bit session id (32 lowercase hex digits)."""
    return secrets.token_hex(16)


# ---------------------------------------------------------------- the store


class Store:
    """State in SQLite; every method is blocking: call through ``run`` from the event loop."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="handoffd-db")
        self._closed = False

    @classmethod
    def open(cls, path: Path) -> Store:
        """Open (creating with mode 0600, migrating) the database at ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            os.chmod(path, 0o600)
            # check_same_thread off: the connection moves to the store's one DB thread.
            db = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open {path}: {exc}", code="store-open") from exc
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            _migrate(db)
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.chmod(f"{path}{suffix}", 0o600)
        except sqlite3.Error as exc:
            db.close()
            raise StoreError(f"cannot use {path}: {exc}", code="store-open") from exc
        return cls(db, path)

    def close(self) -> None:
        """Close the database (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._executor.submit(self._db.close).result()
        self._executor.shutdown(wait=True)

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking store method on the DB thread and await its result.

        SQLite's own failures come out as StoreError: ``store-full`` when the database cannot
        grow (``database or disk is full``), ``store-failed`` otherwise. The store stays usable:
        the failed statement was rolled back, and reads go on working.
        """
        if self._closed:
            raise StoreError("the store is closed", code="store-closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._executor, functools.partial(fn, *args, **kwargs)
            )
        except sqlite3.Error as exc:
            raise _store_error(exc) from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (rollback on error); for use on the DB thread."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            _rollback(self._db)
            raise
        self._db.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        """How many migrations have run."""
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    # ------------------------------------------------------------ sessions

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
                (session_id, app_id, title, _dumps(context), now, now),
            )
            _insert_items(db, session_id, items)
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
        return _session(row, tuple(_item(i) for i in items))

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
            items.setdefault(r[0], []).append(_item(r[1:]))
        return [_session(row, tuple(items.get(row[0], ()))) for row in rows]

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
                args.append(_dumps(context))
            db.execute(
                f"UPDATE sessions SET {', '.join(sets)} WHERE id = ?",  # noqa: S608 - constant
                (*args, session_id),
            )
            if items is not None:
                db.execute("DELETE FROM session_items WHERE session_id = ?", (session_id,))
                _insert_items(db, session_id, items)
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

    # ------------------------------------------------------------ handoffs

    def create_handoff(
        self,
        handoff_id: str,
        *,
        direction: str,
        peer: str,
        state: str,
        session_id: str | None = None,
        types: Sequence[str] = (),
        bytes_total: int = 0,
    ) -> HandoffRecord:
        """Record a new handoff (``direction``: ``out`` or ``in``)."""
        now = time.time()
        self._db.execute(
            f"INSERT INTO handoffs ({_HANDOFF_COLUMNS})"  # noqa: S608 - constant
            " VALUES (?, ?, ?, ?, ?, NULL, ?, 0, ?, 0, NULL, ?, ?)",
            (
                handoff_id,
                direction,
                session_id,
                peer,
                state,
                json.dumps(list(types)),
                bytes_total,
                now,
                now,
            ),
        )
        return self._require_handoff(handoff_id)

    def update_handoff(self, handoff_id: str, **fields: Any) -> HandoffRecord:
        """Set some of ``HANDOFF_FIELDS``; StoreError(handoff-not-found) if unknown."""
        unknown = set(fields) - HANDOFF_FIELDS
        if unknown:
            raise ValueError(f"not handoff fields: {sorted(unknown)}")
        if "types" in fields:
            fields["types"] = json.dumps(list(fields["types"]))
        sets = ", ".join(f"{name} = ?" for name in fields)
        cur = self._db.execute(
            f"UPDATE handoffs SET {sets}{', ' if sets else ''}updated_at = ? WHERE id = ?",  # noqa: S608 - names from HANDOFF_FIELDS
            (*fields.values(), time.time(), handoff_id),
        )
        if cur.rowcount == 0:
            raise StoreError(f"no handoff {handoff_id}", code="handoff-not-found")
        return self._require_handoff(handoff_id)

    def get_handoff(self, handoff_id: str) -> HandoffRecord | None:
        """One handoff, or None."""
        row = self._db.execute(
            f"SELECT {_HANDOFF_COLUMNS} FROM handoffs WHERE id = ?",  # noqa: S608 - constant
            (handoff_id,),
        ).fetchone()
        return None if row is None else _handoff(row)

    def _require_handoff(self, handoff_id: str) -> HandoffRecord:
        record = self.get_handoff(handoff_id)
        if record is None:
            raise StoreError(f"no handoff {handoff_id}", code="handoff-not-found")
        return record

    def list_handoffs(self, *, limit: int = 200) -> list[HandoffRecord]:
        """Handoffs, most recently updated first."""
        rows = self._db.execute(
            f"SELECT {_HANDOFF_COLUMNS} FROM handoffs"  # noqa: S608 - constant
            " ORDER BY updated_at DESC, id LIMIT ?",
            (limit,),
        )
        return [_handoff(r) for r in rows]

    # ------------------------------------------------------------ devices cache

    def replace_devices(self, devices: Sequence[DeviceRecord]) -> None:
        """Make the cache exactly ``devices`` (the server's current list)."""
        with self.transaction() as db:
            db.execute("DELETE FROM devices")
            db.executemany(
                "INSERT INTO devices (device_id, name, platform, revoked, online, last_seen,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        d.device_id,
                        d.name,
                        d.platform,
                        int(d.revoked),
                        None if d.online is None else int(d.online),
                        d.last_seen,
                        d.created_at,
                        d.updated_at,
                    )
                    for d in devices
                ],
            )

    def mark_device_revoked(self, device_id: str) -> None:
        """Record that ``device_id`` is revoked."""
        self._db.execute(
            "UPDATE devices SET revoked = 1, online = 0, updated_at = ? WHERE device_id = ?",
            (time.time(), device_id),
        )

    def list_devices(self) -> list[DeviceRecord]:
        """The cached devices of the account."""
        rows = self._db.execute(
            "SELECT device_id, name, platform, revoked, online, last_seen, created_at, updated_at"
            " FROM devices ORDER BY name, device_id"
        )
        return [
            DeviceRecord(
                device_id=r[0],
                name=r[1],
                platform=r[2],
                revoked=bool(r[3]),
                online=None if r[4] is None else bool(r[4]),
                last_seen=r[5],
                created_at=r[6],
                updated_at=r[7],
            )
            for r in rows
        ]


# ---------------------------------------------------------------- helpers


def _migrate(db: sqlite3.Connection) -> None:
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > len(MIGRATIONS):
        raise StoreError(
            f"state.db has schema version {version}, newer than this handoffd "
            f"({len(MIGRATIONS)}): upgrade handoffd",
            code="store-too-new",
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in script.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {number}")
        except BaseException:
            _rollback(db)
            raise
        db.execute("COMMIT")


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back the open transaction, if SQLite has not already: after some errors (a full
    disk: ``SQLITE_FULL``) it rolls back by itself, and a ROLLBACK then would fail and hide
    the error that matters."""
    if db.in_transaction:
        db.execute("ROLLBACK")


def _store_error(exc: sqlite3.Error) -> StoreError:
    """SQLite's failure as the daemon's StoreError (``store-full`` or ``store-failed``)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF == sqlite3.SQLITE_FULL:
        return StoreError(f"the state database cannot be written: {exc}", code="store-full")
    return StoreError(f"state database error: {exc}", code="store-failed")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _insert_items(db: sqlite3.Connection, session_id: str, items: Sequence[Item]) -> None:
    db.executemany(
        "INSERT INTO session_items (session_id, idx, type, name, mime, source, text, data, path,"
        " size, mtime) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                session_id,
                idx,
                i.type,
                i.name,
                i.mime,
                i.source,
                i.text,
                i.data,
                i.path,
                i.size,
                i.mtime,
            )
            for idx, i in enumerate(items)
        ],
    )


def _item(r: Sequence[Any]) -> Item:
    return Item(
        type=r[0],
        name=r[1],
        mime=r[2],
        source=r[3],
        size=r[4],
        text=r[5],
        data=None if r[6] is None else bytes(r[6]),
        path=r[7],
        mtime=r[8],
    )


def _handoff(r: Sequence[Any]) -> HandoffRecord:
    return HandoffRecord(
        id=r[0],
        direction=r[1],
        session_id=r[2],
        peer=r[3],
        state=r[4],
        path=r[5],
        types=tuple(json.loads(r[6])),
        bytes_done=r[7],
        bytes_total=r[8],
        attempts=r[9],
        error=r[10],
        created_at=r[11],
        updated_at=r[12],
    )


def _session(row: Sequence[Any], items: tuple[Item, ...]) -> SessionRecord:
    return SessionRecord(
        id=row[0],
        app_id=row[1],
        title=row[2],
        context=json.loads(row[3]),
        state=row[4],
        created_at=row[5],
        updated_at=row[6],
        items=items,
    )
