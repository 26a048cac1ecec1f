"""The server's store: accounts (CA, password), devices, certificates, CRLs, invites.

Synchronous and thread-safe (call it from a worker thread in async code, e.g.
``await asyncio.to_thread(store.join, ...)``). The database is a back-end
(``handoffd.server.storedb``): SQLite in the data directory by default (WAL, so
the CLI can write while the server runs), or PostgreSQL for several instances.
Every multi-row change is one serialised write transaction (SQLite's ``BEGIN
IMMEDIATE``): a failed operation leaves nothing behind. ``MIGRATIONS[i]``
(SQLite's dialect, translated for PostgreSQL) takes version ``i`` to ``i + 1``.

Refusals are ``ServerError`` with the HTTP ``status`` the API answers with and
a stable ``code``. The clock is injectable (``clock``, Unix seconds) for tests.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hmac
import re
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from handoffd import identity
from handoffd.errors import HandoffError, IdentityError, ServerError, StoreError
from handoffd.server import invite_limits, pairing, passwords, storedb
from handoffd.server.storedb import DB_FILE as DB_FILE
from handoffd.server.storedb import Conn

MAX_DEVICE_NAME = 64
MAX_ACCOUNT_NAME = 64
_PLATFORM_RE = re.compile(r"[A-Za-z0-9._+-]{1,32}")
_ACCOUNT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_LOCATOR_TRIES = 16
_TOUCH_INTERVAL = 60.0

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE accounts (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE COLLATE NOCASE,
        password_hash TEXT,
        ca_key_pem BLOB NOT NULL,
        ca_cert_pem BLOB NOT NULL,
        crl_number INTEGER NOT NULL,
        crl_pem BLOB NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL REFERENCES accounts(id),
        name TEXT NOT NULL,
        platform TEXT NOT NULL,
        public_key BLOB NOT NULL,
        created_at REAL NOT NULL,
        last_seen REAL,
        revoked_at REAL
    );
    CREATE INDEX devices_account ON devices(account_id);
    CREATE TABLE certs (
        serial TEXT PRIMARY KEY,
        device_id TEXT NOT NULL REFERENCES devices(id),
        account_id TEXT NOT NULL REFERENCES accounts(id),
        cert_pem BLOB NOT NULL,
        issued_at REAL NOT NULL,
        not_after REAL NOT NULL
    );
    CREATE INDEX certs_device ON certs(device_id);
    CREATE TABLE invites (
        id INTEGER PRIMARY KEY,
        account_id TEXT NOT NULL REFERENCES accounts(id),
        token_hash BLOB NOT NULL UNIQUE,
        locator TEXT NOT NULL,
        code_hash BLOB NOT NULL,
        created_by TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        used_at REAL,
        device_id TEXT,
        failures INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX invites_locator ON invites(locator);
    CREATE INDEX invites_account ON invites(account_id);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def _refuse(message: str, code: str, status: int = 400) -> ServerError:
    return ServerError(message, code=code, status=status)


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def check_device_name(name: object) -> str:
    """A device name: 1..64 characters after trimming, no control or format characters."""
    if not isinstance(name, str):
        raise _refuse("device name must be a string", "name-invalid")
    name = unicodedata.normalize("NFC", name.strip())
    if not 1 <= len(name) <= MAX_DEVICE_NAME:
        raise _refuse(f"device name must be 1..{MAX_DEVICE_NAME} characters", "name-invalid")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") for c in name):
        raise _refuse("device name contains control characters", "name-invalid")
    return name


def check_platform(platform: object) -> str:
    """A platform word: 1..32 of ``A-Za-z0-9._+-``."""
    if not isinstance(platform, str) or not _PLATFORM_RE.fullmatch(platform):
        raise _refuse("platform must be 1..32 of A-Z a-z 0-9 . _ + -", "platform-invalid")
    return platform


def check_account_name(name: str) -> str:
    """An account name: 1..64 of ``A-Za-z0-9._-``, starting with a letter or digit."""
    if not _ACCOUNT_RE.fullmatch(name):
        raise _refuse(
            "account name must be 1..64 of A-Z a-z 0-9 . _ -, starting with a letter or digit",
            "account-name-invalid",
        )
    return name


@dataclass(frozen=True)
class Account:
    """An account (without its CA key)."""

    account_id: str
    name: str
    created_at: float
    has_password: bool
    ca_cert: x509.Certificate


@dataclass(frozen=True)
class Device:
    """A device of an account as stored."""

    device_id: str
    account_id: str
    name: str
    platform: str
    public_key: Ed25519PublicKey
    created_at: float
    last_seen: float | None
    revoked_at: float | None
    cert_not_after: float

    @property
    def revoked(self) -> bool:
        """True once revoked (permanent)."""
        return self.revoked_at is not None


@dataclass(frozen=True)
class NewInvite:
    """A freshly made invite: its id, account, plaintext secrets (show once) and expiry."""

    invite_id: int
    account_id: str
    secrets: pairing.InviteSecrets
    expires_at: float


@dataclass(frozen=True)
class Issued:
    """A device certificate just issued, with what the device needs next to it."""

    device_id: str
    account_id: str
    device_cert: x509.Certificate
    account_ca: x509.Certificate
    crl: x509.CertificateRevocationList


class _CodeMismatchError(Exception):
    """A short code located an invite but its secret was wrong (counted after rollback)."""

    def __init__(self, invite_id: int) -> None:
        super().__init__(invite_id)
        self.invite_id = invite_id


class Store:
    """The server's database (see the module docstring)."""

    def __init__(self, backend: storedb.Backend, clock: Callable[[], float]) -> None:
        self._backend = backend
        self.path = backend.path
        self._clock = clock

    @classmethod
    def open(
        cls, data_dir: Path, *, clock: Callable[[], float] = time.time, database: str | None = None
    ) -> Store:
        """Open and migrate ``data_dir/server.db``, or PostgreSQL at ``database`` (see storedb)."""
        backend = storedb.open_backend(data_dir, database)
        try:
            backend.migrate(MIGRATIONS)
        except BaseException:
            backend.close()
            raise
        return cls(backend, clock)

    @property
    def kind(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._backend.kind

    def close(self) -> None:
        """Close the database (idempotent)."""
        self._backend.close()

    def now(self) -> float:
        """The store's clock (Unix seconds)."""
        return self._clock()

    def _tx(self) -> contextlib.AbstractContextManager[Conn]:
        return self._backend.tx()

    def _read(self) -> contextlib.AbstractContextManager[Conn]:
        return self._backend.read()

    def schema_version(self) -> int:
        """The database's schema version."""
        return self._backend.schema_version()

    def data_version(self) -> int:
        """Changes whenever another writer (e.g. the CLI) may have revoked; cheap to poll."""
        return self._backend.data_version()

    def counts(self) -> dict[str, int]:
        """Row counts per table (tests check that failures leave nothing behind)."""
        with self._read() as db:
            return {
                table: int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608
                for table in ("accounts", "devices", "certs", "invites")
            }

    def get_meta(self, key: str) -> str | None:
        """A server setting (e.g. ``public_url``)."""
        with self._read() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Set a server setting."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    # ------------------------------------------------------------ accounts

    def create_account(self, name: str, password: str | None = None) -> Account:
        """A new account with its CA and first CRL (number 1); password hashed with Argon2id."""
        name = check_account_name(name)
        password_hash = passwords.hash_password(password) if password is not None else None
        now = self._clock()
        account_id = identity.new_account_id()
        ca = identity.create_account_ca(account_id, now=_utc(now))
        crl = identity.issue_crl(ca, [], number=1, now=_utc(now))
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
        except storedb.INTEGRITY_ERRORS:
            raise _refuse(f"account {name!r} exists", "account-exists", 409) from None
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
            raise _refuse(f"no account {name_or_id!r:.80}", "account-unknown", 404)
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
                raise _refuse("no such account", "account-unknown", 404)

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

    def _load_ca(self, db: Conn, account_id: str) -> identity.AccountCA:
        row = db.execute(
            "SELECT ca_key_pem, ca_cert_pem FROM accounts WHERE id = ?", (account_id,)
        ).fetchone()
        if row is None:
            raise _refuse("no such account", "account-unknown", 404)
        key = serialization.load_pem_private_key(row[0], password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise StoreError("account CA key is not Ed25519", code="store-corrupt")
        return identity.AccountCA(account_id, key, identity.load_cert(row[1]))

    # ------------------------------------------------------------ CRL

    def _issue_crl(
        self, db: Conn, ca: identity.AccountCA, now: float
    ) -> x509.CertificateRevocationList:
        (number,) = db.execute(
            "SELECT crl_number FROM accounts WHERE id = ?", (ca.account_id,)
        ).fetchone()
        revoked = [
            identity.Revoked(int(serial, 16), _utc(revoked_at))
            for serial, revoked_at in db.execute(
                "SELECT c.serial, d.revoked_at FROM certs c JOIN devices d ON d.id = c.device_id "
                "WHERE c.account_id = ? AND d.revoked_at IS NOT NULL AND c.not_after > ? "
                "ORDER BY c.serial",
                (ca.account_id, now - identity.CLOCK_SKEW.total_seconds()),
            )
        ]
        crl = identity.issue_crl(ca, revoked, number=int(number) + 1, now=_utc(now))
        db.execute(
            "UPDATE accounts SET crl_number = ?, crl_pem = ? WHERE id = ?",
            (int(number) + 1, identity.crl_to_pem(crl), ca.account_id),
        )
        return crl

    def current_crl(self, account_id: str) -> x509.CertificateRevocationList:
        """The account's CRL; re-issued (next number) once half its lifetime has passed."""
        with self._read() as db:
            row = db.execute("SELECT crl_pem FROM accounts WHERE id = ?", (account_id,)).fetchone()
        if row is None:
            raise _refuse("no such account", "account-unknown", 404)
        crl = identity.load_crl(row[0])
        now = self._clock()
        next_update = crl.next_update_utc
        if next_update is not None and next_update.timestamp() - now > (
            identity.CRL_LIFETIME.total_seconds() / 2
        ):
            return crl
        with self._tx() as db:
            return self._issue_crl(db, self._load_ca(db, account_id), now)

    # ------------------------------------------------------------ invites

    def create_invite(
        self, account_id: str, *, created_by: str, ttl: float = pairing.INVITE_TTL
    ) -> NewInvite:
        """A new single-use invite to ``account_id`` (``created_by``: ``cli``, ``web`` or a device id)."""
        if not 0 < ttl <= 24 * 3600:
            raise _refuse("invite lifetime must be in (0, 24 h]", "invite-ttl-invalid")
        now = self._clock()
        with self._tx() as db:
            if db.execute("SELECT 1 FROM accounts WHERE id = ?", (account_id,)).fetchone() is None:
                raise _refuse("no such account", "account-unknown", 404)
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
                raise _refuse("no such invite", "invite-unknown", 403)
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
        raise _refuse("no such invite", "invite-unknown", 403)

    def _check_invite(self, expires_at: float, used_at: float | None, failures: int) -> None:
        if failures >= pairing.MAX_FAILURES:
            raise _refuse("invite is locked after too many wrong codes", "invite-locked", 423)
        if used_at is not None:
            raise _refuse("invite was already used", "invite-used", 409)
        if self._clock() >= expires_at:
            raise _refuse("invite has expired", "invite-expired", 410)

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
            raise _refuse("give exactly one of token and code", "bad-request")
        if token is not None and not pairing.is_token(token):
            raise _refuse("no such invite", "invite-unknown", 403)
        if code is not None:
            try:
                code = pairing.normalize_code(code)
            except HandoffError:
                raise _refuse("no such invite", "invite-unknown", 403) from None
        try:
            with self._tx() as db:
                return self._join_tx(db, token, code, csr_pem, name, platform)
        except _CodeMismatchError as mismatch:
            with self._tx() as db:
                db.execute(
                    "UPDATE invites SET failures = failures + 1 WHERE id = ?",
                    (mismatch.invite_id,),
                )
            raise _refuse("no such invite", "invite-unknown", 403) from None

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
        device_id, csr, public_key = _checked_csr(csr_pem)
        existing = db.execute(
            "SELECT revoked_at FROM devices WHERE id = ?", (device_id,)
        ).fetchone()
        if existing is not None:
            if existing[0] is not None:
                raise _refuse("this device key was revoked", "device-revoked", 403)
            raise _refuse("this device key is already paired", "device-exists", 409)
        now = self._clock()
        ca = self._load_ca(db, account_id)
        cert = identity.issue_device_cert(ca, csr, now=_utc(now))
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
            raise _refuse("invite was already used", "invite-used", 409)
        crl = identity.load_crl(
            db.execute("SELECT crl_pem FROM accounts WHERE id = ?", (account_id,)).fetchone()[0]
        )
        return Issued(device_id, account_id, cert, ca.cert, crl)

    def _insert_cert(
        self,
        db: Conn,
        device_id: str,
        account_id: str,
        cert: x509.Certificate,
        now: float,
    ) -> None:
        db.execute(
            "INSERT INTO certs(serial, device_id, account_id, cert_pem, issued_at, not_after) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                format(cert.serial_number, "x"),
                device_id,
                account_id,
                identity.cert_to_pem(cert),
                now,
                cert.not_valid_after_utc.timestamp(),
            ),
        )

    def renew(self, device_id: str, csr_pem: bytes) -> Issued:
        """A new certificate for a paired, unrevoked device; the CSR must be for the same key."""
        csr_device, csr, _ = _checked_csr(csr_pem)
        if csr_device != device_id:
            raise _refuse("CSR is for another key than this device's", "csr-wrong-key")
        now = self._clock()
        with self._tx() as db:
            row = db.execute(
                "SELECT account_id, revoked_at FROM devices WHERE id = ?", (device_id,)
            ).fetchone()
            if row is None:
                raise _refuse("unknown device", "device-unknown", 404)
            if row[1] is not None:
                raise _refuse("device is revoked", "device-revoked", 403)
            account_id = str(row[0])
            ca = self._load_ca(db, account_id)
            cert = identity.issue_device_cert(ca, csr, now=_utc(now))
            self._insert_cert(db, device_id, account_id, cert, now)
            crl = identity.load_crl(
                db.execute("SELECT crl_pem FROM accounts WHERE id = ?", (account_id,)).fetchone()[0]
            )
        return Issued(device_id, account_id, cert, ca.cert, crl)

    # ------------------------------------------------------------ devices

    _DEVICE_SELECT = (
        "SELECT d.id, d.account_id, d.name, d.platform, d.public_key, d.created_at, d.last_seen, "
        "d.revoked_at, (SELECT MAX(not_after) FROM certs c WHERE c.device_id = d.id) "
        "FROM devices d "
    )

    @staticmethod
    def _device(row: tuple[object, ...]) -> Device:
        raw = row[4]
        if not isinstance(raw, bytes):
            raise StoreError("device key is not bytes", code="store-corrupt")
        return Device(
            device_id=str(row[0]),
            account_id=str(row[1]),
            name=str(row[2]),
            platform=str(row[3]),
            public_key=Ed25519PublicKey.from_public_bytes(raw),
            created_at=float(row[5]),  # type: ignore[arg-type]
            last_seen=None if row[6] is None else float(row[6]),  # type: ignore[arg-type]
            revoked_at=None if row[7] is None else float(row[7]),  # type: ignore[arg-type]
            cert_not_after=float(row[8] or 0.0),  # type: ignore[arg-type]
        )

    def get_device(self, device_id: str) -> Device | None:
        """The device with this id, if any."""
        with self._read() as db:
            row = db.execute(self._DEVICE_SELECT + "WHERE d.id = ?", (device_id,)).fetchone()
        return None if row is None else self._device(row)

    def list_devices(self, account_id: str) -> list[Device]:
        """The account's devices, oldest first (revoked ones included)."""
        with self._read() as db:
            rows = db.execute(
                self._DEVICE_SELECT + "WHERE d.account_id = ? ORDER BY d.created_at, d.id",
                (account_id,),
            ).fetchall()
        return [self._device(r) for r in rows]

    def revoked_among(self, device_ids: Iterable[str]) -> set[str]:
        """Those of ``device_ids`` that are revoked (or gone)."""
        ids = list(device_ids)
        if not ids:
            return set()
        with self._read() as db:
            placeholders = ",".join("?" * len(ids))
            live = {
                r[0]
                for r in db.execute(
                    f"SELECT id FROM devices WHERE revoked_at IS NULL AND id IN ({placeholders})",  # noqa: S608
                    ids,
                )
            }
        return set(ids) - live

    def touch_device(self, device_id: str) -> None:
        """Record that the device was seen now (at most once a minute per device)."""
        now = self._clock()
        with self._tx() as db:
            db.execute(
                "UPDATE devices SET last_seen = ? WHERE id = ? "
                "AND (last_seen IS NULL OR last_seen < ?)",
                (now, device_id, now - _TOUCH_INTERVAL),
            )

    def _owned(self, db: Conn, account_id: str, device_id: str) -> tuple[object, ...]:
        row = db.execute(
            "SELECT revoked_at FROM devices WHERE id = ? AND account_id = ?",
            (device_id, account_id),
        ).fetchone()
        if row is None:
            raise _refuse("no such device in this account", "device-unknown", 404)
        return tuple(row)

    def rename_device(self, account_id: str, device_id: str, name: str) -> Device:
        """Rename a device of ``account_id``."""
        name = check_device_name(name)
        with self._tx() as db:
            self._owned(db, account_id, device_id)
            db.execute("UPDATE devices SET name = ? WHERE id = ?", (name, device_id))
        device = self.get_device(device_id)
        if device is None:  # pragma: no cover - just renamed
            raise _refuse("no such device in this account", "device-unknown", 404)
        return device

    def revoke_device(self, account_id: str, device_id: str) -> x509.CertificateRevocationList:
        """Revoke a device of ``account_id``: a new CRL (next number) listing all its certificates.

        Revoking a revoked device changes nothing and returns the current CRL.
        """
        now = self._clock()
        with self._tx() as db:
            (revoked_at,) = self._owned(db, account_id, device_id)
            if revoked_at is None:
                db.execute("UPDATE devices SET revoked_at = ? WHERE id = ?", (now, device_id))
                return self._issue_crl(db, self._load_ca(db, account_id), now)
        return self.current_crl(account_id)


def _checked_csr(csr_pem: bytes) -> tuple[str, x509.CertificateSigningRequest, Ed25519PublicKey]:
    """Parse a CSR and check its proof of possession; return (device id, CSR, key)."""
    try:
        csr = identity.load_csr(csr_pem)
        device_id = identity.check_csr(csr)
    except IdentityError as exc:
        raise _refuse(exc.message, exc.code) from None
    public_key = csr.public_key()
    if not isinstance(public_key, Ed25519PublicKey):  # pragma: no cover - check_csr ensures it
        raise _refuse("CSR key is not Ed25519", "csr-bad-key")
    return device_id, csr, public_key
