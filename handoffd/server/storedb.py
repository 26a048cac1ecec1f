"""The server store on SQLite (``server.db`` in the data directory, WAL), and choosing the back-end.

SQLite is the embedded default; PostgreSQL (``handoffd.server.storepg``) is
chosen by ``--database postgresql://…`` or ``$HANDOFF_DATABASE`` for several
instances. Both give the surface of ``handoffd.server.storebackend``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from handoffd.errors import StoreError
from handoffd.server.storebackend import Backend, check_version

DB_FILE = "server.db"
DATABASE_ENV = "HANDOFF_DATABASE"


class SQLiteBackend:
    """``server.db``: one connection behind a lock, WAL, ``BEGIN IMMEDIATE`` per change."""

    kind = "sqlite"

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._db = conn
        self.path: Path | None = path
        self._lock = threading.RLock()
        self._closed = False

    @classmethod
    def open(cls, data_dir: Path) -> SQLiteBackend:
        """Open (creating, mode 0600 in a 0700 dir) ``data_dir/server.db``."""
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = data_dir / DB_FILE
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        try:
            conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=10000")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {path}: {exc}", code="store-open") from exc
        return cls(conn, path)

    def close(self) -> None:
        """Close the database (idempotent)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on error."""
        with self._lock:
            if self._closed:
                raise StoreError("store is closed", code="store-closed")
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"database is busy: {exc}", code="store-busy") from exc
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """The connection, for reads."""
        with self._lock:
            if self._closed:
                raise StoreError("store is closed", code="store-closed")
            yield self._db

    def migrate(self, migrations: Sequence[str]) -> None:
        """Bring the schema to ``len(migrations)`` (``PRAGMA user_version``), one transaction."""
        with self.tx() as db:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            check_version(version, len(migrations))
            for number in range(version, len(migrations)):
                for statement in migrations[number].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {number + 1}")

    def schema_version(self) -> int:
        """The database's schema version."""
        with self.read() as db:
            return int(db.execute("PRAGMA user_version").fetchone()[0])

    def data_version(self) -> int:
        """Changes whenever another connection (e.g. the CLI) commits."""
        with self.read() as db:
            return int(db.execute("PRAGMA data_version").fetchone()[0])


def database_url(database: str | None) -> str | None:
    """``--database`` or else ``$HANDOFF_DATABASE``; None (or empty) means SQLite."""
    url = database if database is not None else os.environ.get(DATABASE_ENV)
    return url or None


def open_backend(data_dir: Path, database: str | None = None) -> Backend:
    """SQLite in ``data_dir`` unless ``database`` (or ``$HANDOFF_DATABASE``) names PostgreSQL."""
    url = database_url(database)
    if url is None:
        return SQLiteBackend.open(data_dir)
    if url.startswith(("postgresql://", "postgres://")):
        from handoffd.server.storepg import PostgresBackend  # only with --database

        return PostgresBackend.open(url)
    raise StoreError(
        "--database must be a postgresql:// URL (or absent for SQLite)", code="database-url-invalid"
    )
