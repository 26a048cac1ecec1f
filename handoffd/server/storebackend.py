"""The surface a server store back-end gives ``Store``, shared by SQLite (``storedb``) and PostgreSQL (``storepg``).

A back-end gives ``Store`` one small surface: ``tx()`` (one write transaction;
writers are serialised, as SQLite's ``BEGIN IMMEDIATE`` does), ``read()``,
``migrate(migrations)``, ``schema_version()``, ``data_version()`` (changes when
someone else may have revoked a device; cheap to poll) and ``close()``
(idempotent). Connections answer ``execute(sql, params)`` with ``?``
placeholders and SQLite's dialect; a back-end translates what it must.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from handoffd.errors import StoreError


class IntegrityError(Exception):
    """A constraint (e.g. a unique name) refused a write (PostgreSQL's, translated)."""


# What Store catches for "that row exists": SQLite's own error and the translated one.
INTEGRITY_ERRORS: tuple[type[Exception], ...] = (sqlite3.IntegrityError, IntegrityError)


class Cursor(Protocol):
    """The part of a DB-API cursor the store uses."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Conn(Protocol):
    """A connection inside ``tx()`` or ``read()``."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...


class Backend(Protocol):
    """One database behind ``Store`` (see the module docstring)."""

    kind: str
    path: Path | None

    def tx(self) -> AbstractContextManager[Conn]: ...

    def read(self) -> AbstractContextManager[Conn]: ...

    def migrate(self, migrations: Sequence[str]) -> None: ...

    def schema_version(self) -> int: ...

    def data_version(self) -> int: ...

    def close(self) -> None: ...


def check_version(version: int, latest: int) -> None:
    """Refuse a database whose schema is newer than this code (``store-too-new``)."""
    if version > latest:
        raise StoreError(
            f"database schema {version} is newer than this server ({latest})",
            code="store-too-new",
        )
