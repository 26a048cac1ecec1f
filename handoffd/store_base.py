"""The store's core: one connection, its DB thread, transactions, SQLite errors as StoreError."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ParamSpec, TypeVar

from handoffd.errors import StoreError
from handoffd.store_migrations import rollback

P = ParamSpec("P")
T = TypeVar("T")


class StoreBase:
    """One SQLite connection run on one DB thread: ``run``, ``transaction``, ``close``."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="handoffd-db")
        self._closed = False

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
            raise store_error(exc) from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (rollback on error); for use on the DB thread."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            rollback(self._db)
            raise
        self._db.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        """How many migrations have run."""
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])


def store_error(exc: sqlite3.Error) -> StoreError:
    """SQLite's failure as the daemon's StoreError (``store-full`` or ``store-failed``)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF == sqlite3.SQLITE_FULL:
        return StoreError(f"the state database cannot be written: {exc}", code="store-full")
    return StoreError(f"state database error: {exc}", code="store-failed")
