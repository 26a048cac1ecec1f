"""The relay's session table: sessions held here by id and by account, joins checked against it, ended ones remembered."""

from __future__ import annotations

import asyncio
import hmac
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from handoffd.errors import ServerError
from handoffd.server.relaysession import MESSAGES, RelaySession, token_hash

MAX_ENDED = 4096
"""Ended sessions remembered (for their token lifetime) to tell a late party why."""


class SessionTable:
    """The relay sessions this instance holds (owned by ``RelayHub``)."""

    def __init__(self) -> None:
        self._sessions: dict[str, RelaySession] = {}
        self._per_account: dict[str, set[str]] = {}
        self._opened_total: dict[str, int] = {}
        self._ended: OrderedDict[str, tuple[str, tuple[str, str], str, float]] = OrderedDict()

    def devices(self) -> set[str]:
        """Every device taking part in a relay session now."""
        return {d for s in self._sessions.values() for d in s.devices}

    def get(self, session_id: str) -> RelaySession | None:
        """The session held here under ``session_id``, if any."""
        return self._sessions.get(session_id)

    def live(self, account_id: str) -> int:
        """How many sessions of the account are held here."""
        return len(self._per_account.get(account_id, ()))

    def all(self) -> list[RelaySession]:
        """Every session held here."""
        return list(self._sessions.values())

    def of_devices(self, device_ids: Iterable[str]) -> list[RelaySession]:
        """The sessions one of ``device_ids`` takes part in."""
        ids = set(device_ids)
        return [s for s in self._sessions.values() if ids & set(s.devices)]

    def stats(self, account_id: str) -> dict[str, int]:
        """The account's relay sessions: pending (not both joined), active, opened since start."""
        sessions = [self._sessions[s] for s in self._per_account.get(account_id, ())]
        active = sum(1 for s in sessions if s.started_at is not None)
        return {
            "pending": len(sessions) - active,
            "active": active,
            "opened": self._opened_total.get(account_id, 0),
        }

    def add(self, session: RelaySession) -> None:
        """Hold a newly opened session."""
        self._sessions[session.session_id] = session
        self._per_account.setdefault(session.account_id, set()).add(session.session_id)
        self._opened_total[session.account_id] = self._opened_total.get(session.account_id, 0) + 1

    def remove(self, session: RelaySession, reason: str) -> None:
        """Forget an ended session (remembering why, if a party may still come to join)."""
        self._sessions.pop(session.session_id, None)
        if session.started_at is None:
            self._ended[session.session_id] = (
                session.account_id,
                session.devices,
                reason,
                session.expires_at,
            )
            while len(self._ended) > MAX_ENDED:
                self._ended.popitem(last=False)
        ids = self._per_account.get(session.account_id)
        if ids is not None:
            ids.discard(session.session_id)
            if not ids:
                self._per_account.pop(session.account_id, None)

    def join(
        self, device_id: str, account_id: str, data: dict[str, Any]
    ) -> tuple[RelaySession, str]:
        """The session and role a device's relay auth claims; ServerError if it may not join."""
        session_id, token = data.get("session"), data.get("token")
        if not isinstance(session_id, str) or not isinstance(token, str) or len(token) > 128:
            raise ServerError("relay auth needs session and token", code="bad-request")
        session = self._sessions.get(session_id)
        if session is None:
            self._explain_ended(session_id, device_id, account_id)
            raise ServerError("no such relay session (or it expired)", code="relay-unknown")
        if session.ended is not None or session.started_at is not None:
            raise ServerError("no such relay session (or it expired)", code="relay-unknown")
        role = session.role_of(device_id)
        if account_id != session.account_id or role is None:
            raise ServerError("not a party to this relay session", code="relay-forbidden")
        if not hmac.compare_digest(session.token_hashes[role], token_hash(token)):
            raise ServerError("wrong relay token", code="relay-token-invalid")
        if role in session.used:
            raise ServerError("this relay token was used already", code="relay-token-used")
        if asyncio.get_running_loop().time() > session.expires_at:
            raise ServerError("no such relay session (or it expired)", code="relay-unknown")
        session.used.add(role)
        return session, role

    def _explain_ended(self, session_id: str, device_id: str, account_id: str) -> None:
        """Raise the reason a recently ended session ended, to one of its parties only."""
        ended = self._ended.get(session_id)
        if ended is None:
            return
        account, devices, reason, until = ended
        now = asyncio.get_running_loop().time()
        if account == account_id and device_id in devices and now <= until:
            raise ServerError(MESSAGES.get(reason, reason), code=reason)
