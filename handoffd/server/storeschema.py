"""The server store's schema: ``MIGRATIONS[i]`` (SQLite's dialect, translated for PostgreSQL) takes version ``i`` to ``i + 1``."""

from __future__ import annotations

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
