"""Real handoff-server processes and CLI runs for the server tests."""

from __future__ import annotations

import os
import selectors
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from handoffd import identity
from handoffd.serverlink import JoinResult, ServerClient, parse_invite

READY_PREFIX = "handoff-server listening "
# The PostgreSQL database of a data directory whose server uses one (`cli` passes it on).
DATABASES: dict[Path, str] = {}


def cli(data: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``python -m handoffd.server.cli ARGS --data DATA`` (``--database`` if it has one)."""
    argv = [sys.executable, "-m", "handoffd.server.cli", *args, "--data", str(data)]
    if data in DATABASES:
        argv += ["--database", DATABASES[data]]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} failed: {result.stderr}")
    return result


def create_account(data: Path, name: str) -> str:
    """Create an account (no password: faster) and return its id."""
    return cli(data, "account", "create", name, "--no-password").stdout.strip()


def cli_invite(data: Path, account: str, *extra: str) -> tuple[str, str]:
    """Make an invite with the CLI; return (url, code)."""
    out = cli(data, "invite", account, "--no-qr", *extra).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return fields["url"].strip(), fields["code"].strip()


@dataclass
class ServerProcess:
    """A ``handoff-server serve`` child process on 127.0.0.1 with a free port."""

    data: Path
    extra: tuple[str, ...] = ()
    database: str | None = None
    proc: subprocess.Popen[str] | None = None
    url: str = ""
    fingerprint: str | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.data.parent / f"{self.data.name}-server.log"
        if self.database is not None:
            DATABASES[self.data] = self.database

    def start(self, timeout: float = 30.0) -> ServerProcess:
        """Start it and wait for the ready line."""
        argv = [
            sys.executable,
            "-m",
            "handoffd.server.cli",
            "serve",
            "--data",
            str(self.data),
            "--listen",
            "127.0.0.1:0",
            *self.extra,
        ]
        if self.database is not None:
            argv += ["--database", self.database]
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True)
        assert self.proc.stdout is not None
        line = _read_line(self.proc.stdout, timeout)
        if not line.startswith(READY_PREFIX):
            self.stop()
            raise AssertionError(f"no ready line (got {line!r}); log: {self.log.read_text()}")
        fields = dict(part.split("=", 1) for part in line[len(READY_PREFIX) :].split())
        self.url = fields["url"]
        self.fingerprint = None if fields["fingerprint"] == "none" else fields["fingerprint"]
        return self

    def stop(self) -> int | None:
        """SIGTERM, wait, then SIGKILL if needed; return the exit status."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode

    def client(
        self,
        key: Ed25519PrivateKey | None = None,
        result: JoinResult | None = None,
        *,
        fingerprint: str | None = None,
    ) -> ServerClient:
        """A client of this server (as a device if given)."""
        return ServerClient(
            self.url,
            fingerprint=fingerprint or self.fingerprint,
            device_key=key,
            device_cert=None if result is None else result.device_cert,
        )

    def counts(self) -> dict[str, int]:
        """Rows that a failed request must not change (read with a separate connection)."""
        if self.database is not None:
            return _pg_counts(self.database)
        db = sqlite3.connect(self.data / "server.db", timeout=10)
        try:

            def q(sql: str) -> int:
                return int(db.execute(sql).fetchone()[0])

            return {
                "accounts": q("SELECT COUNT(*) FROM accounts"),
                "devices": q("SELECT COUNT(*) FROM devices"),
                "certs": q("SELECT COUNT(*) FROM certs"),
                "invites": q("SELECT COUNT(*) FROM invites"),
                "used_invites": q("SELECT COUNT(*) FROM invites WHERE used_at IS NOT NULL"),
                "revoked": q("SELECT COUNT(*) FROM devices WHERE revoked_at IS NOT NULL"),
                "crl_numbers": q("SELECT COALESCE(SUM(crl_number), 0) FROM accounts"),
            }
        finally:
            db.close()


def _pg_counts(url: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(url) as db:

        def q(sql: str) -> int:
            row = db.execute(sql).fetchone()
            assert row is not None
            return int(row[0])

        return {
            "accounts": q("SELECT COUNT(*) FROM accounts"),
            "devices": q("SELECT COUNT(*) FROM devices"),
            "certs": q("SELECT COUNT(*) FROM certs"),
            "invites": q("SELECT COUNT(*) FROM invites"),
            "used_invites": q("SELECT COUNT(*) FROM invites WHERE used_at IS NOT NULL"),
            "revoked": q("SELECT COUNT(*) FROM devices WHERE revoked_at IS NOT NULL"),
            "crl_numbers": q("SELECT COALESCE(SUM(crl_number), 0) FROM accounts"),
        }


def _read_line(stream: IO[str], timeout: float) -> str:
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sel.select(timeout=max(0.0, deadline - time.monotonic())):
                return stream.readline().strip()
        return ""
    finally:
        sel.unregister(stream)


async def pair(
    server: ServerProcess, invite_text: str, name: str = "laptop"
) -> tuple[Ed25519PrivateKey, JoinResult, ServerClient]:
    """Join with a fresh key; return the key, the result and a device client (caller closes it)."""
    invite = parse_invite(invite_text, server_url=server.url, fingerprint=server.fingerprint)
    key = identity.generate_device_key()
    async with ServerClient(invite.server_url, fingerprint=invite.fingerprint) as joiner:
        result = await joiner.join(invite, key=key, name=name, platform="linux")
    return key, result, server.client(key, result)
