"""The inbox's bound: at most ``Timings.inbox_max`` received sessions wait for their app at once.

Every received session is a row and a directory until its app resumes it or ``inbox_ttl``
expires it; a device of the account flooding small handoffs would otherwise grow both without
end. Beyond the bound offers are declined ``inbox-full`` (handoffd.policy.decide).
"""

from __future__ import annotations

from handoffd.store import Store


def inbox_full(store: Store, limit: int) -> bool:
    """True if ``limit`` or more inbox entries are ``received`` (blocking: the DB thread)."""
    with store.transaction() as db:
        row = db.execute("SELECT COUNT(*) FROM engine_inbox WHERE state = 'received'").fetchone()
    return int(row[0]) >= limit
