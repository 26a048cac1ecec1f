"""Real handoffd/handoff-server processes inside network-lab hosts, and what tests measure there.

Used by the lab end-to-end and fault suites (tests/handoff/e2e/, tests/handoff/faults/) and
bench/bench_handoff.py. Every process
runs inside a lab host (``host.popen``), so the lab stops it by PID on close;
homes are short paths under /tmp (AF_UNIX socket paths are limited to ~108
bytes); only lab addresses (198.18.0.0/15) and loopback are used.

The rogue clients that attack a daemon or the relay from a lab host live in
``tests.handoff.rogues``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.lab import Host
from tests.server.helpers import cli_invite
from tests.support.processes import READY_PREFIX, DaemonProcess, ServerProcess

MiB = 1024 * 1024
NOTES = "org.handoffd.notes"
SERVER_PORT = 8443
"""The server's port inside its lab host (a namespace of its own: any port is free there), fixed
so that a stopped server can be started again at the same URL."""
SIGNALING_PORT = 7711
"""The target daemon's LAN signaling port (fixed, so rogue clients can be pointed at it)."""


# ---------------------------------------------------------------- processes in lab hosts


@dataclass
class LabDaemon(DaemonProcess):
    """A ``handoffd`` process inside a lab host; stdout (where launched apps print) to ``out``."""

    host: Host | None = None

    @property
    def out(self) -> Path:
        """The daemon's stdout, which launched apps inherit."""
        return self.home.parent / f"{self.home.name}.out"

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start it inside the host's namespace (tracked by the lab, stopped by PID)."""
        if self.host is None:
            raise RuntimeError("a LabDaemon needs a host")
        env = {**os.environ, **self.env}
        env.pop("HANDOFF_HOME", None)
        with self.log.open("ab") as log, self.out.open("ab") as out:
            self.proc = self.host.popen(
                [sys.executable, "-m", "handoffd.daemon", "--home", str(self.home)],
                stdout=out,
                stderr=log,
                env=env,
            )
        return self.proc

    @property
    def pid(self) -> int:
        """PID of the running daemon (``ip netns exec`` execs it: the Popen's own PID)."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError("the daemon is not running")
        return self.proc.pid

    def running(self) -> bool:
        """True while the process lives."""
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        """Everything the daemon logged so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class LabServer(ServerProcess):
    """``handoff-server serve`` inside a lab host, on its lab address and a fixed port."""

    host: Host | None = None
    port: int = SERVER_PORT
    account_ids: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment of the server process (e.g. ``HANDOFF_RELAY_TAP_DIR``)."""

    def start(self, timeout: float = 30.0) -> LabServer:
        """Start (or start again: same data, same URL) and wait for the ready line."""
        if self.host is None:
            raise RuntimeError("a LabServer needs a host")
        argv = [sys.executable, "-m", "handoffd.server.cli", "serve", "--data", str(self.data),
                "--listen", f"{self.host.address}:{self.port}", *self.extra]  # fmt: skip
        env = {**os.environ, **self.env}
        with self.log.open("a") as log:
            self.proc = self.host.popen(
                argv, stdout=subprocess.PIPE, stderr=log, text=True, env=env
            )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline and not line:
            line = self.proc.stdout.readline().strip()
            if not line and self.proc.poll() is not None:
                break
        if not line.startswith(READY_PREFIX):
            self.stop()
            raise AssertionError(f"server did not start ({line!r}): {self.log.read_text()}")
        fields = dict(part.split("=", 1) for part in line[len(READY_PREFIX) :].split())
        self.url, self.fingerprint = fields["url"], fields["fingerprint"]
        return self

    def running(self) -> bool:
        """True while the process lives."""
        return self.proc is not None and self.proc.poll() is None


def pair_daemon(server: ServerProcess, d: DaemonProcess, account: str, name: str) -> str:
    """Pair ``d`` to ``account`` through a CLI-made invite; its device id."""
    url, _ = cli_invite(server.data, account)
    status, body = d.curl("POST", "/v1/pair", {"invite": url, "name": name})
    if status != 200:
        raise AssertionError(f"pairing {name} failed: {body}")
    return str(body["device_id"])


def stop_quietly(d: DaemonProcess) -> None:
    """Stop a daemon if it runs (SIGTERM, then SIGKILL); for ``finally`` blocks."""
    if d.proc is not None and d.proc.poll() is None:
        with contextlib.suppress(AssertionError):
            d.stop(timeout=10)
    d.proc = None


def kill_hard(d: DaemonProcess) -> None:
    """SIGKILL (a crash: no goodbye, no cleanup) and reap."""
    proc, d.proc = d.proc, None
    if proc is not None and proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


def terminate_all(daemons: Sequence[DaemonProcess], *, timeout: float = 20.0) -> None:
    """SIGTERM every running daemon of ``daemons`` at once, then wait for each (a graceful
    shutdown of all of them at the same moment); AssertionError if one ignores SIGTERM."""
    procs = [d.proc for d in daemons if d.proc is not None and d.proc.poll() is None]
    for d in daemons:
        d.proc = None
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    hung = []
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
            hung.append(proc.pid)
    if hung:
        raise AssertionError(f"handoffd did not stop on SIGTERM: {hung}")


# ---------------------------------------------------------------- a small disk


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (e.g. ``"320m"``) mounted at ``where`` (made if missing); unmounted
    when the block ends, also on failure (lazily if something still holds it). Needs root.

    Mounted in the root mount namespace before the processes that use it start: ``ip netns
    exec`` gives each lab process a copy of the mount table, taken when it starts."""
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        check=True,
        capture_output=True,
        timeout=10,
    )
    try:
        yield where
    finally:
        done = subprocess.run(["umount", str(where)], capture_output=True, timeout=10, check=False)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=10)
        with contextlib.suppress(OSError):
            where.rmdir()


def free_bytes(path: Path) -> int:
    """Free bytes of the filesystem holding ``path``."""
    return shutil.disk_usage(path).free


def fill(path: Path, *, leave: int = 0) -> int:
    """Create ``path`` taking all but ``leave`` free bytes of its filesystem; the bytes taken.

    Allocated, not written (``posix_fallocate``); whatever cannot be allocated in one piece is
    added in halving steps down to one page, so the filesystem ends up full (or at ``leave``)."""
    taken = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        step = max(0, free_bytes(path) - leave)
        while step >= 4096:
            try:
                os.posix_fallocate(fd, taken, step)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                step //= 2
                continue
            taken += step
            step = min(step, max(0, free_bytes(path) - leave))
    finally:
        os.close(fd)
    return taken


# ---------------------------------------------------------------- what crossed the wire


def link_bytes(host: Host) -> tuple[int, int]:
    """(rx, tx) byte counters of ``host``'s lab interface, as the kernel counts them."""
    out = host.run(["ip", "-j", "-s", "link", "show", "dev", "eth0"]).stdout
    stats = json.loads(out)[0]["stats64"]
    return int(stats["rx"]["bytes"]), int(stats["tx"]["bytes"])


@dataclass
class WireMeter:
    """Bytes through a host's interface since ``start()`` (frames: headers and all)."""

    host: Host
    rx0: int = 0
    tx0: int = 0

    def start(self) -> WireMeter:
        """Take the starting counters."""
        self.rx0, self.tx0 = link_bytes(self.host)
        return self

    def read(self) -> tuple[int, int]:
        """(rx, tx) since start."""
        rx, tx = link_bytes(self.host)
        return rx - self.rx0, tx - self.tx0


# ---------------------------------------------------------------- certificates


def write_expired_cert(server_data: Path, account_id: str, home: Path) -> dt.datetime:
    """Overwrite the device certificate in ``home`` with one the account CA issued for the same
    key, valid from 40 to 10 days ago; return its not-after. The daemon must be stopped."""
    from handoffd import identity
    from handoffd.paths import Paths
    from handoffd.server.store import Store

    paths = Paths.resolve(home)
    key = identity.load_private_key(paths.device_key)
    store = Store.open(server_data)
    try:
        with store._read() as db:  # the server's own loader: the CA key never leaves the server
            ca = store._load_ca(db, account_id)
    finally:
        store.close()
    cert = identity.build_device_cert(
        ca,
        key.public_key(),
        device_id=identity.device_id_for(key.public_key()),
        now=dt.datetime.now(dt.UTC) - dt.timedelta(days=40),
        lifetime=dt.timedelta(days=30),
    )
    paths.device_cert.write_bytes(identity.cert_to_pem(cert))
    return cert.not_valid_after_utc
