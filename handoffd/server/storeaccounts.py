"""The server store's accounts: creation (with the account CA), lookup, passwords and login."""

from __future__ import annotations

from handoffd import identity
from handoffd.server import passwords
from handoffd.server.storebackend import INTEGRITY_ERRORS, Conn
from handoffd.server.storecore import StoreCore
from handoffd.server.storemodel import Account, check_account_name, refuse, utc


class AccountStore(StoreCore):
    """Accounts (part of ``Store``)."""

    def create_account(self, name: str, password: str | None = None) -> Account:
        """A new account with its CA and first CRL (number 1); password hashed with Argon2id."""
        name = check_account_name(name)
        password_hash = passwords.hash_password(password) if password is not None else None
        now = self._clock()
        account_id = identity.new_account_id()
        ca = identity.create_account_ca(account_id, now=utc(now))
        crl = identity.issue_crl(ca, [], number=1, now=utc(now))
        key_pem = identity.private_key_to_pem(ca.key)
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO accounts(id, name, password_hash, ca_key_pem, ca_cert_pem, "
                    "crl_number, crl_pem, created_at) VALUES (?, ?, ?, ?, ?, 1, ?, ?)",
                    (
                        account_id,
                        name,
                        password_hash,
                        key_pem,
                        identity.cert_to_pem(ca.cert),
                        identity.crl_to_pem(crl),
                        now,
                    ),
                )
        except INTEGRITY_ERRORS:
            raise refuse(f"account {name!r} exists", "account-exists", 409) from None
        return Account(account_id, name, now, password_hash is not None, ca.cert)

    def _account_row(self, db: Conn, where: str, value: str) -> Account | None:
        row = db.execute(
            "SELECT id, name, created_at, password_hash IS NOT NULL, ca_cert_pem "  # noqa: S608
            f"FROM accounts WHERE {where} = ?",
            (value,),
        ).fetchone()
        if row is None:
            return None
        return Account(row[0], row[1], row[2], bool(row[3]), identity.load_cert(row[4]))

    def get_account(self, account_id: str) -> Account | None:
        """The account with this id, if any."""
        with self._read() as db:
            return self._account_row(db, "id", account_id)

    def account_by_name(self, name: str) -> Account | None:
        """The account with this name (case-insensitive), if any."""
        with self._read() as db:
            return self._account_row(db, "name", name)

    def resolve_account(self, name_or_id: str) -> Account:
        """The account named or identified by ``name_or_id``; ServerError(account-unknown)."""
        account = self.get_account(name_or_id) or self.account_by_name(name_or_id)
        if account is None:
            raise refuse(f"no account {name_or_id!r:.80}", "account-unknown", 404)
        return account

    def list_accounts(self) -> list[Account]:
        """Every account, by name."""
        with self._read() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM accounts ORDER BY name")]
            return [a for i in ids if (a := self._account_row(db, "id", i)) is not None]

    def set_password(self, account_id: str, password: str) -> None:
        """Replace the account's password (Argon2id)."""
        password_hash = passwords.hash_password(password)
        with self._tx() as db:
            cur = db.execute(
                "UPDATE accounts SET password_hash = ? WHERE id = ?", (password_hash, account_id)
            )
            if cur.rowcount != 1:
                raise refuse("no such account", "account-unknown", 404)

    def delete_account(self, account_id: str) -> int:
        """Delete the account with its devices, certificates and invites; the number of devices.

        A running server refuses the deleted devices at their next request and
        disconnects them within its revocation poll (gone counts as revoked).
        """
        with self._tx() as db:
            devices = db.execute(
                "SELECT COUNT(*) FROM devices WHERE account_id = ?", (account_id,)
            ).fetchone()[0]
            for table in ("invites", "certs", "devices"):
                db.execute(f"DELETE FROM {table} WHERE account_id = ?", (account_id,))  # noqa: S608
            cur = db.execute("DELETE FROM accounts WHERE id = ?", (account_id,))
            if cur.rowcount != 1:
                raise refuse("no such account", "account-unknown", 404)
        return int(devices)

    def login_record(self, name: str) -> tuple[str, str | None] | None:
        """(account id, password hash or None) for the account ``name``, if any (no hashing here)."""
        with self._read() as db:
            row = db.execute(
                "SELECT id, password_hash FROM accounts WHERE name = ?", (name,)
            ).fetchone()
        return None if row is None else (str(row[0]), None if row[1] is None else str(row[1]))

    def check_login(self, name: str, password: str) -> Account | None:
        """The account if ``password`` is right for ``name``; None otherwise (same cost either way).

        Hashes in the calling thread: the server checks through ``passwords.PasswordChecker``.
        """
        record = self.login_record(name)
        if not passwords.check_or_dummy(password, None if record is None else record[1]):
            return None
        return None if record is None else self.get_account(record[0])
