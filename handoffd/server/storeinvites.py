"""The server store's pairing invites and joining with one (a device and its first certificate)."""

from __future__ import annotations

import hmac

from handoffd import identity
from handoffd.errors import HandoffError, StoreError
from handoffd.server import invite_limits, pairing
from handoffd.server.storebackend import Conn
from handoffd.server.storedevices import DeviceStore, checked_csr
from handoffd.server.storemodel import (
    Issued,
    NewInvite,
    check_device_name,
    check_platform,
    refuse,
    utc,
)

_LOCATOR_TRIES = 16


class _CodeMismatchError(Exception):
    """A short code located an invite but its secret was wrong (counted after rollback)."""

    def __init__(self, invite_id: int) -> None:
        super().__init__(invite_id)
        self.invite_id = invite_id


class InviteStore(DeviceStore):
    """Invites and joins (part of ``Store``)."""

    def create_invite(
        self, account_id: str, *, created_by: str, ttl: float = pairing.INVITE_TTL
    ) -> NewInvite:
        """A new single-use invite to ``account_id`` (``created_by``: ``cli``, ``web`` or a device id)."""
        if not 0 < ttl <= 24 * 3600:
            raise refuse("invite lifetime must be in (0, 24 h]", "invite-ttl-invalid")
        now = self._clock()
        with self._tx() as db:
            if db.execute("SELECT 1 FROM accounts WHERE id = ?", (account_id,)).fetchone() is None:
                raise refuse("no such account", "account-unknown", 404)
            invite_limits.purge_expired(db, now)
            invite_limits.check_live(db, account_id, now)
            for _ in range(_LOCATOR_TRIES):
                invite_secrets = pairing.new_secrets()
                clash = db.execute(
                    "SELECT 1 FROM invites WHERE locator = ? AND used_at IS NULL AND expires_at > ?",
                    (invite_secrets.locator, now),
                ).fetchone()
                if clash is None:
                    break
            else:
                raise StoreError("cannot find a free invite locator", code="invite-exhausted")
            cur = db.execute(
                "INSERT INTO invites(account_id, token_hash, locator, code_hash, created_by, "
                "created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    account_id,
                    pairing.secret_hash(invite_secrets.token),
                    invite_secrets.locator,
                    pairing.secret_hash(invite_secrets.code),
                    created_by,
                    now,
                    now + ttl,
                ),
            )
            invite_id = int(cur.fetchall()[0][0])
        return NewInvite(invite_id, account_id, invite_secrets, now + ttl)

    def invite_state(self, invite_id: int) -> dict[str, object] | None:
        """An invite's bookkeeping (used, failures, expiry) for tools and tests."""
        with self._read() as db:
            row = db.execute(
                "SELECT account_id, created_by, created_at, expires_at, used_at, device_id, "
                "failures FROM invites WHERE id = ?",
                (invite_id,),
            ).fetchone()
        if row is None:
            return None
        keys = ("account_id", "created_by", "created_at", "expires_at", "used_at", "device_id")
        state: dict[str, object] = dict(zip(keys, row[:6], strict=True))
        state["failures"] = int(row[6])
        state["locked"] = int(row[6]) >= pairing.MAX_FAILURES
        return state

    def _find_invite(
        self, db: Conn, token: str | None, code: str | None
    ) -> tuple[int, str, float, float | None, int]:
        if token is not None:
            row = db.execute(
                "SELECT id, account_id, expires_at, used_at, failures FROM invites "
                "WHERE token_hash = ?",
                (pairing.secret_hash(token),),
            ).fetchone()
            if row is None:
                raise refuse("no such invite", "invite-unknown", 403)
            return row[0], row[1], row[2], row[3], row[4]
        assert code is not None  # noqa: S101 - join() checks that exactly one is given
        locator = code[: pairing.LOCATOR_LEN]
        rows = db.execute(
            "SELECT id, account_id, expires_at, used_at, failures, code_hash FROM invites "
            "WHERE locator = ? ORDER BY created_at DESC LIMIT 4",
            (locator,),
        ).fetchall()
        digest = pairing.secret_hash(code)
        for row in rows:
            if hmac.compare_digest(row[5], digest):
                return row[0], row[1], row[2], row[3], row[4]
        now = self._clock()
        live = [r for r in rows if r[3] is None and r[2] > now]
        if live:
            raise _CodeMismatchError(live[0][0])
        raise refuse("no such invite", "invite-unknown", 403)

    def _check_invite(self, expires_at: float, used_at: float | None, failures: int) -> None:
        if failures >= pairing.MAX_FAILURES:
            raise refuse("invite is locked after too many wrong codes", "invite-locked", 423)
        if used_at is not None:
            raise refuse("invite was already used", "invite-used", 409)
        if self._clock() >= expires_at:
            raise refuse("invite has expired", "invite-expired", 410)

    # ------------------------------------------------------------ join, renew

    def join(
        self,
        *,
        token: str | None = None,
        code: str | None = None,
        csr_pem: bytes,
        name: str,
        platform: str,
    ) -> Issued:
        """Redeem an invite: check it and the CSR, store the device, issue its certificate.

        One transaction: on any refusal nothing is stored (a wrong short code
        is counted against the invite it located, separately).
        """
        if (token is None) == (code is None):
            raise refuse("give exactly one of token and code", "bad-request")
        if token is not None and not pairing.is_token(token):
            raise refuse("no such invite", "invite-unknown", 403)
        if code is not None:
            try:
                code = pairing.normalize_code(code)
            except HandoffError:
                raise refuse("no such invite", "invite-unknown", 403) from None
        try:
            with self._tx() as db:
                return self._join_tx(db, token, code, csr_pem, name, platform)
        except _CodeMismatchError as mismatch:
            with self._tx() as db:
                db.execute(
                    "UPDATE invites SET failures = failures + 1 WHERE id = ?",
                    (mismatch.invite_id,),
                )
            raise refuse("no such invite", "invite-unknown", 403) from None

    def _join_tx(
        self,
        db: Conn,
        token: str | None,
        code: str | None,
        csr_pem: bytes,
        name: str,
        platform: str,
    ) -> Issued:
        invite_id, account_id, expires_at, used_at, failures = self._find_invite(db, token, code)
        self._check_invite(expires_at, used_at, failures)
        name = check_device_name(name)
        platform = check_platform(platform)
        device_id, csr, public_key = checked_csr(csr_pem)
        existing = db.execute(
            "SELECT revoked_at FROM devices WHERE id = ?", (device_id,)
        ).fetchone()
        if existing is not None:
            if existing[0] is not None:
                raise refuse("this device key was revoked", "device-revoked", 403)
            raise refuse("this device key is already paired", "device-exists", 409)
        now = self._clock()
        ca = self._load_ca(db, account_id)
        cert = identity.issue_device_cert(ca, csr, now=utc(now))
        db.execute(
            "INSERT INTO devices(id, account_id, name, platform, public_key, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (device_id, account_id, name, platform, identity.raw_public_key(public_key), now),
        )
        self._insert_cert(db, device_id, account_id, cert, now)
        cur = db.execute(
            "UPDATE invites SET used_at = ?, device_id = ? WHERE id = ? AND used_at IS NULL",
            (now, device_id, invite_id),
        )
        if cur.rowcount != 1:  # pragma: no cover - the IMMEDIATE transaction rules it out
            raise refuse("invite was already used", "invite-used", 409)
        crl = identity.load_crl(
            db.execute("SELECT crl_pem FROM accounts WHERE id = ?", (account_id,)).fetchone()[0]
        )
        return Issued(device_id, account_id, cert, ca.cert, crl)
