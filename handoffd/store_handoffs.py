"""The store's handoffs table."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from handoffd.errors import StoreError
from handoffd.store_base import StoreBase
from handoffd.store_records import (
    HANDOFF_COLUMNS,
    HANDOFF_FIELDS,
    HandoffRecord,
    handoff_from_row,
)


class HandoffTables(StoreBase):
    """Handoffs in either direction."""

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
            f"INSERT INTO handoffs ({HANDOFF_COLUMNS})"  # noqa: S608 - constant
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
            f"SELECT {HANDOFF_COLUMNS} FROM handoffs WHERE id = ?",  # noqa: S608 - constant
            (handoff_id,),
        ).fetchone()
        return None if row is None else handoff_from_row(row)

    def _require_handoff(self, handoff_id: str) -> HandoffRecord:
        record = self.get_handoff(handoff_id)
        if record is None:
            raise StoreError(f"no handoff {handoff_id}", code="handoff-not-found")
        return record

    def list_handoffs(self, *, limit: int = 200) -> list[HandoffRecord]:
        """Handoffs, most recently updated first."""
        rows = self._db.execute(
            f"SELECT {HANDOFF_COLUMNS} FROM handoffs"  # noqa: S608 - constant
            " ORDER BY updated_at DESC, id LIMIT ?",
            (limit,),
        )
        return [handoff_from_row(r) for r in rows]
