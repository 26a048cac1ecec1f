"""How many invites the store keeps: expired unused invites are purged, live ones capped per account.

Called inside ``Store.create_invite``'s transaction (the only way the table
grows), so the table holds at most the live invites plus the used ones (one
per paired device). Creation is also rate-limited per creator and per account
in front of the store (``ratelimit.InviteLimits``).
"""

from __future__ import annotations

from handoffd.errors import ServerError
from handoffd.server.storebackend import Conn

MAX_LIVE_PER_ACCOUNT = 50


def purge_expired(db: Conn, now: float) -> int:
    """Delete the invites that expired unused; return how many."""
    cur = db.execute("DELETE FROM invites WHERE used_at IS NULL AND expires_at <= ?", (now,))
    return cur.rowcount


def check_live(db: Conn, account_id: str, now: float) -> None:
    """ServerError(invite-too-many, 429) if the account already has the most live invites."""
    (live,) = db.execute(
        "SELECT COUNT(*) FROM invites WHERE account_id = ? AND used_at IS NULL AND expires_at > ?",
        (account_id, now),
    ).fetchone()
    if int(live) >= MAX_LIVE_PER_ACCOUNT:
        raise ServerError(
            f"the account already has {MAX_LIVE_PER_ACCOUNT} unused invites; "
            "wait for some to expire",
            code="invite-too-many",
            status=429,
        )
