"""Migration 2 of ``store.MIGRATIONS``: the handoff engine's tables in ``state.db``."""

ENGINE_TABLES = """
CREATE TABLE IF NOT EXISTS engine_handoffs (
    id TEXT PRIMARY KEY,
    peer_name TEXT NOT NULL DEFAULT '',
    next_retry_at REAL,
    offer BLOB,
    data_bytes INTEGER NOT NULL DEFAULT 0,
    channel_bytes INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS engine_checkpoints (
    handoff_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    PRIMARY KEY (handoff_id, idx)
);
CREATE TABLE IF NOT EXISTS engine_inbox (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    title TEXT NOT NULL,
    context TEXT NOT NULL,
    from_device TEXT NOT NULL,
    from_name TEXT NOT NULL,
    items TEXT NOT NULL,
    state TEXT NOT NULL,
    received_at REAL NOT NULL,
    resumed_at REAL
);
CREATE TABLE IF NOT EXISTS engine_expired (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    expired_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS engine_notices (
    handoff_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    created_at REAL NOT NULL
)
"""
