"""A paired device that sends names built to deceive: the receiving daemon declines the offer.

The sending daemon's control API refuses such names, so the test plays a
compromised sender by writing them into its state database directly; the
real receiving daemon must decline on its own (issue 16, finding 13).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from handoffd.control.client import Item
from handoffd.errors import ApiError
from tests.handoff.helpers import Pair, paired_daemons, wait_state


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    """Server + laptop (a) + desk (b), paired and nearby."""
    with paired_daemons() as p:
        yield p


def _tamper(pair: Pair, sql: str, *args: object) -> None:
    db = sqlite3.connect(pair.a.paths.state_db, timeout=10)
    try:
        with db:
            db.execute(sql, args)
    finally:
        db.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("column", "value", "code"),
    [
        ("name", "invoice\u202efdp.exe", "bad-item-name"),
        ("name", "report\u200b.txt", "bad-item-name"),
        ("name", "a\u2028b.txt", "bad-item-name"),
        ("title", "\u202eevil", "manifest-bad-title"),
    ],
)
async def test_the_receiver_declines_deceptive_names(
    pair: Pair, column: str, value: str, code: str
) -> None:
    async with pair.client(pair.a) as a, pair.client(pair.b) as b:
        session = await a.publish(
            "org.example.notes", "Notes", items=[Item.of_text("document", "n.txt", "hi")]
        )
        if column == "name":
            _tamper(
                pair, "UPDATE session_items SET name = ? WHERE session_id = ?", value, session.id
            )
        else:
            _tamper(pair, "UPDATE sessions SET title = ? WHERE id = ?", value, session.id)
        stored = await a.session(session.id)
        assert (stored.items[0].name if column == "name" else stored.title) == value
        h = await a.send(session.id, "desk")
        done = await wait_state(a, h.id, {"declined", "failed", "delivered"})
        assert done["state"] in ("declined", "failed")
        assert done["error"]["code"] == code
        with pytest.raises(ApiError) as err:
            await b.inbox_entry(h.id)
        assert err.value.code == "inbox-not-found"
        assert not (pair.b.paths.inbox / h.id).exists()
