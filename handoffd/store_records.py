"""The store's records (frozen dataclasses) and their SQLite row encodings."""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from handoffd.items import Item

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
HANDOFF_COLUMNS = (
    "id, direction, session_id, peer, state, path, types, bytes_done, bytes_total, attempts,"
    " error, created_at, updated_at"
)


def new_session_id() -> str:
    """A random 128-bit session id (32 lowercase hex digits)."""
    return secrets.token_hex(16)


def dumps_json(obj: Any) -> str:
    """Compact JSON text for a column."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def insert_items(db: sqlite3.Connection, session_id: str, items: Sequence[Item]) -> None:
    """Insert ``items`` as the rows of ``session_id`` (in order)."""
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


def item_from_row(r: Sequence[Any]) -> Item:
    """A ``session_items`` row (from ``type``) as an Item."""
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


def handoff_from_row(r: Sequence[Any]) -> HandoffRecord:
    """A ``handoffs`` row (``HANDOFF_COLUMNS``) as a HandoffRecord."""
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


def session_from_row(row: Sequence[Any], items: tuple[Item, ...]) -> SessionRecord:
    """A ``sessions`` row and its items as a SessionRecord."""
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
