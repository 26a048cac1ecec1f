"""Real ``handoffd`` and ``handoff-server`` processes for the tests (one wrapper each), and curl
as an independent client of a daemon."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from handoffd.paths import Paths
from handoffd.serverlink import JoinResult, ServerClient

READY_PREFIX = "handoff-server listening "
# The PostgreSQL database of a data directory whose server uses one (`cli` passes it on).
DATABASES: dict[Path, str] = {}
CURL = "/usr/bin/curl"


@dataclass
class DaemonProcess:
    """``python -m handoffd.daemon --home HOME`` as a child process."""

    home: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def paths(self) -> Paths:
        """The daemon's file layout."""
        return Paths.resolve(self.home)

    @property
    def socket(self) -> Path:
        """The control socket."""
        return self.paths.control_socket

    @property
    def log(self) -> Path:
        """Where the daemon's stderr goes (next to the home, not in it)."""
        return self.home.parent / f"{self.home.name}.log"

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the process without waiting for it."""
        env = {**os.environ, **self.env}
        env.pop("HANDOFF_HOME", None)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "handoffd.daemon", "--home", str(self.home)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
            )
        return self.proc

    def start(self, timeout: float = 30.0) -> DaemonProcess:
        """Start and wait until the control socket accepts connections."""
        proc = self.spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"handoffd exited {proc.returncode}: {self.log.read_text()}")
            if accepts(self.socket):
                return self
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"handoffd did not start: {self.log.read_text()}")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait (SIGKILL if it hangs); the exit status."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
                raise AssertionError("handoffd did not stop on SIGTERM") from None
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL (a crash) and reap."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)

    def curl(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None
    ) -> tuple[int, Any]:
        """One request through curl; (HTTP status, decoded JSON or None)."""
        return curl(self.socket, method, path, body, raw=raw)


def accepts(path: Path) -> bool:
    """True if something accepts connections on the Unix socket ``path``."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1.0)
        s.connect(os.fspath(path))
    except OSError:
        return False
    finally:
        s.close()
    return True


def curl(
    sock: Path, method: str, path: str, body: Any = None, *, raw: bytes | None = None
) -> tuple[int, Any]:
    """``curl --unix-socket SOCK -X METHOD http://handoff/PATH`` with an optional JSON body."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    argv = [CURL, "-sS", "--unix-socket", str(sock), "-X", method, "-w", "\n%{http_code}"]
    if data is not None:
        argv += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
    argv.append(f"http://handoff{path}")
    result = subprocess.run(argv, input=data, capture_output=True, timeout=60, check=False)
    if result.returncode != 0:
        raise AssertionError(f"curl failed ({result.returncode}): {result.stderr.decode()}")
    text, _, status = result.stdout.decode().rpartition("\n")
    return int(status), json.loads(text) if text else None


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
        line = read_line(self.proc.stdout, timeout)
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


def read_line(stream: IO[str], timeout: float) -> str:
    """One line of ``stream`` (stripped), or "" if none comes within ``timeout`` seconds."""
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
