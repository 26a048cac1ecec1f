"""A real coturn ``turnserver`` inside a lab host (Debian package ``coturn``), for TURN tests.

``start_coturn(host, secret=..., workdir=...)`` runs it with its own flags and
no configuration from /etc: ``use-auth-secret`` with the given
``static-auth-secret`` (the TURN REST API credentials handoff-server hands
out), listening and relaying on the host's lab address only, no TLS/DTLS, no
CLI, every lab address allowed as a peer, a verbose log (one line per
request, flushed at once: ``allocations``/``refusals`` read it) in
``workdir``. It is a tracked lab process (stopped by PID when the lab
closes); ``Coturn.stop()`` stops it earlier. Readiness is the UDP socket in
``ss`` (the log does not say when it listens).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.lab import Host, LabError

REALM = "handoff.test"


def turnserver_path() -> str:
    """The ``turnserver`` binary (LabError if coturn is not installed)."""
    path = shutil.which("turnserver") or (
        "/usr/bin/turnserver" if Path("/usr/bin/turnserver").exists() else None
    )
    if path is None:
        raise LabError("turnserver not found: install the Debian package coturn")
    return path


@dataclass
class Coturn:
    """A running turnserver in ``host``; its log is ``log``."""

    host: Host
    proc: subprocess.Popen[bytes]
    log: Path
    port: int
    realm: str

    @property
    def turn_url(self) -> str:
        """``turn:<address>:<port>?transport=udp``."""
        return f"turn:{self.host.address}:{self.port}?transport=udp"

    @property
    def stun_url(self) -> str:
        """``stun:<address>:<port>`` (coturn answers STUN binding requests too)."""
        return f"stun:{self.host.address}:{self.port}"

    def log_text(self) -> str:
        """Everything logged so far."""
        return self.log.read_text(errors="replace")

    def allocations(self, username: str) -> int:
        """How many allocations for ``username`` succeeded (coturn's log lines)."""
        needle = f"user <{username}>: incoming packet ALLOCATE processed, success"
        return self.log_text().count(needle)

    def refusals(self, username: str) -> int:
        """How many requests of ``username`` were refused as unauthorized (401)."""
        pattern = re.compile(
            rf"user <{re.escape(username)}>: incoming packet \w+ processed, error 401"
        )
        return len(pattern.findall(self.log_text()))

    def stop(self) -> int | None:
        """SIGTERM by PID, then SIGKILL after 5 s; the exit status (idempotent)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self.proc.returncode


def start_coturn(
    host: Host,
    *,
    secret: str,
    workdir: Path,
    port: int = 3478,
    realm: str = REALM,
    timeout: float = 15.0,
) -> Coturn:
    """Start turnserver in ``host`` and wait until it listens on UDP; LabError otherwise."""
    workdir.mkdir(parents=True, exist_ok=True)
    empty_conf = workdir / "turnserver.conf"
    empty_conf.write_text("")
    log = workdir / "turnserver.log"
    log.touch()
    argv = [
        turnserver_path(),
        "-c",
        str(empty_conf),
        "--listening-ip",
        host.address,
        "--relay-ip",
        host.address,
        "--listening-port",
        str(port),
        "--min-port",
        "49152",
        "--max-port",
        "49999",
        "--use-auth-secret",
        f"--static-auth-secret={secret}",
        f"--realm={realm}",
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        "--no-rfc5780",
        "--no-software-attribute",
        "--allowed-peer-ip=198.18.0.0-198.19.255.255",
        f"--log-file={log}",
        "--simple-log",
        "--no-stdout-log",
        "--verbose",  # session lines (ALLOCATE ... success / error 401), flushed at once
        "--pidfile",
        str(workdir / "turnserver.pid"),
        "--userdb",
        str(workdir / "turndb"),
    ]
    with (workdir / "turnserver.out").open("wb") as out:
        proc = host.popen(argv, stdout=out, stderr=subprocess.STDOUT)
    coturn = Coturn(host=host, proc=proc, log=log, port=port, realm=realm)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"turnserver exited with {proc.returncode}: {coturn.log_text()[-2000:]}")
        # Its log does not say when it listens; the socket table does.
        listening = host.run(["ss", "-Hlun", "src", f"{host.address}:{port}"]).stdout
        if listening.strip():
            return coturn
        time.sleep(0.05)
    coturn.stop()
    raise LabError(f"turnserver did not listen within {timeout} s: {coturn.log_text()[-2000:]}")
