"""Lab plumbing: run a command, list namespaces and the PIDs inside them, kill, probe, sweep."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import os
import re
import secrets
import shutil
import signal
import string
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

# One logger for the whole lab package (``tests.lab``), as before the split into modules.
log = logging.getLogger(__package__)

PREFIX = "hlab"
LAB_NET = ipaddress.ip_network("198.18.0.0/15")
MCAST_NET = "224.0.0.0/4"
CMD_TIMEOUT = 10.0
STOP_GRACE = 3.0
MAX_SUBNETS = 8
IFNAME = "eth0"

# hlab-<creator pid>-<creator start time in clock ticks>-<random>[-<role>]
_NAME_RE = re.compile(rf"^{PREFIX}-(\d+)-(\d+)-([a-z]{{4}})(?:-[a-z0-9]+)?$")

Direction = Literal["both", "out", "in"]


class LabError(RuntimeError):
    """A lab command failed, or the lab cannot run here."""


# ------------------------------------------------------------------ helpers


def sh(*argv: str, check: bool = True, timeout: float = CMD_TIMEOUT, stdin: str = "") -> str:
    """Run a command (argv, no shell) and return its stdout; LabError on failure when ``check``."""
    log.debug("lab: %s", argv)
    done = subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def netns_list() -> list[str]:
    """Names of all named network namespaces (``ip netns list``)."""
    out = sh("ip", "netns", "list", check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _ns_id(ns: str) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/run/netns/{ns}")
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def pids_in(namespaces: Iterable[str]) -> list[int]:
    """PIDs of live (not zombie) processes whose network namespace is one of ``namespaces``."""
    ids = {i for i in (_ns_id(ns) for ns in namespaces) if i is not None}
    if not ids:
        return []
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:
            continue  # gone, or a zombie
        if (st.st_dev, st.st_ino) in ids:
            found.append(int(entry.name))
    return found


def _kill(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _new_name() -> str:
    pid = os.getpid()
    tag = "".join(secrets.choice(string.ascii_lowercase) for _ in range(4))
    return f"{PREFIX}-{pid}-{_start_ticks(pid)}-{tag}"


def probe() -> str | None:
    """None if the lab can run here, else the reason it cannot (not cached)."""
    if os.geteuid() != 0:
        return "the network lab needs root (network namespaces, nft, tc)"
    for tool in ("ip", "nft", "tc"):
        if shutil.which(tool) is None:
            return f"the network lab needs `{tool}` (iproute2 / nftables)"
    ns = f"{_new_name()}-probe"
    try:
        tbf = ["tbf", "rate", "1mbit", "burst", "16kb", "latency", "50ms"]
        steps: list[tuple[str, list[str]]] = [
            ("ip netns", ["ip", "netns", "add", ns]),
            ("veth", ["ip", "-n", ns, "link", "add", "p0", "type", "veth", "peer", "name", "p1"]),
            ("bridge", ["ip", "-n", ns, "link", "add", "b0", "type", "bridge"]),
            ("nftables", ["ip", "netns", "exec", ns, "nft", "add", "table", "inet", "probe"]),
            ("tc tbf", ["tc", "-n", ns, "qdisc", "add", "dev", "p0", "root", *tbf]),
        ]
        for what, argv in steps:
            try:
                sh(*argv)
            except (LabError, subprocess.TimeoutExpired) as exc:
                return f"the network lab needs {what} support: {exc}"
    finally:
        sh("ip", "netns", "del", ns, check=False)
    return None


@functools.cache
def available() -> str | None:
    """None if the lab can run here, else the reason it cannot (probed once)."""
    return probe()


def sweep_stale() -> list[str]:
    """Remove namespaces of labs whose creating process is gone (killing what runs inside)."""
    stale = []
    for ns in netns_list():
        m = _NAME_RE.match(ns)
        if m is None or _start_ticks(int(m[1])) == int(m[2]):
            continue  # not ours, or its creator is still alive
        stale.append(ns)
    if stale:
        _kill(pids_in(stale), signal.SIGKILL)
        for ns in stale:
            log.warning("lab: removing stale namespace %s", ns)
            sh("ip", "netns", "del", ns, check=False)
    return stale


def stop_processes(
    procs: list[subprocess.Popen[Any]],
    aprocs: list[asyncio.subprocess.Process],
    namespaces: list[str],
) -> None:
    """SIGTERM tracked processes and anything else in our namespaces; SIGKILL after a grace."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for ap in aprocs:
        if ap.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                ap.terminate()
    _kill(pids_in(namespaces), signal.SIGTERM)

    def settled() -> bool:
        return all(p.poll() is not None for p in procs) and not pids_in(namespaces)

    deadline = time.monotonic() + STOP_GRACE
    while not settled() and time.monotonic() < deadline:
        time.sleep(0.02)
    for p in procs:
        if p.poll() is None:
            p.kill()
    _kill(pids_in(namespaces), signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=2)
        for stream in (p.stdin, p.stdout, p.stderr):
            if stream is not None:
                stream.close()
    deadline = time.monotonic() + 2
    while pids_in(namespaces) and time.monotonic() < deadline:
        time.sleep(0.02)
