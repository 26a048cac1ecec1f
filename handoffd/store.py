"""The daemon's SQLite state (``state.db``, WAL, mode 0600): sessions, apps, handoffs, devices.

``Store`` is synchronous and owns one connection; the event loop calls it
through ``await store.run(store.method, ...)``, which runs every call on the
store's single DB thread (calls are serialized, the loop never blocks on I/O).

Schema changes are migrations: append SQL to ``store_migrations.MIGRATIONS``; ``PRAGMA
user_version`` records how many have run.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from handoffd.errors import StoreError
from handoffd.store_devices import DeviceTables
from handoffd.store_handoffs import HandoffTables
from handoffd.store_migrations import MIGRATIONS, SESSION_STATES, migrate
from handoffd.store_records import (
    HANDOFF_FIELDS,
    AppRecord,
    DeviceRecord,
    HandoffRecord,
    SessionRecord,
    new_session_id,
)
from handoffd.store_sessions import SessionTables

__all__ = [
    "HANDOFF_FIELDS",
    "MIGRATIONS",
    "SESSION_STATES",
    "AppRecord",
    "DeviceRecord",
    "HandoffRecord",
    "SessionRecord",
    "Store",
    "new_session_id",
]


class Store(SessionTables, HandoffTables, DeviceTables):
    """State in SQLite; every method is blocking: call through ``run`` from the event loop."""

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
            migrate(db)
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.chmod(f"{path}{suffix}", 0o600)
        except sqlite3.Error as exc:
            db.close()
            raise StoreError(f"cannot use {path}: {exc}", code="store-open") from exc
        return cls(db, path)
