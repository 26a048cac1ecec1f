"""The state database's schema as migrations (``PRAGMA user_version`` counts those run)."""

from __future__ import annotations

import sqlite3

from handoffd.errors import StoreError
from handoffd.store_engine import ENGINE_TABLES

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


def migrate(db: sqlite3.Connection) -> None:
    """Run the migrations ``db`` has not run yet (refuse a newer schema: ``store-too-new``)."""
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
            rollback(db)
            raise
        db.execute("COMMIT")


def rollback(db: sqlite3.Connection) -> None:
    """Roll back the open transaction, if SQLite has not already: after some errors (a full
    disk: ``SQLITE_FULL``) it rolls back by itself, and a ROLLBACK then would fail and hide
    the error that matters."""
    if db.in_transaction:
        db.execute("ROLLBACK")
