"""The server store's base: the back-end, the clock, transactions, settings (``meta``) and counts."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from handoffd.server.storebackend import Backend, Conn


class StoreCore:
    """The database and clock every part of ``Store`` works through."""

    def __init__(self, backend: Backend, clock: Callable[[], float]) -> None:
        self._backend = backend
        self.path = backend.path
        self._clock = clock

    @property
    def kind(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._backend.kind

    def close(self) -> None:
        """Close the database (idempotent)."""
        self._backend.close()

    def now(self) -> float:
        """The store's clock (Unix seconds)."""
        return self._clock()

    def _tx(self) -> contextlib.AbstractContextManager[Conn]:
        return self._backend.tx()

    def _read(self) -> contextlib.AbstractContextManager[Conn]:
        return self._backend.read()

    def schema_version(self) -> int:
        """The database's schema version."""
        return self._backend.schema_version()

    def data_version(self) -> int:
        """Changes whenever another writer (e.g. the CLI) may have revoked; cheap to poll."""
        return self._backend.data_version()

    def counts(self) -> dict[str, int]:
        """Row counts per table (tests check that failures leave nothing behind)."""
        with self._read() as db:
            return {
                table: int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608
                for table in ("accounts", "devices", "certs", "invites")
            }

    def get_meta(self, key: str) -> str | None:
        """A server setting (e.g. ``public_url``)."""
        with self._read() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Set a server setting."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
