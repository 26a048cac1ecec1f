"""The LAN signaling listener exists only while the daemon is paired with LAN discovery on
(issue 16, finding 13): a real daemon process, its sockets read from /proc."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.helpers import cli_invite, create_account
from tests.support.processes import DaemonProcess, ServerProcess
from tests.support.waiting import until

# More than the default 60 s: real daemons paired, unpaired and restarted while their sockets are read.
pytestmark = pytest.mark.timeout(180)


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (IPv4 and IPv6), from /proc."""
    inodes: set[str] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def connects(port: int) -> bool:
    """True if a TCP connection to 127.0.0.1:``port`` is accepted."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return True
    except OSError:
        return False


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hl", dir="/tmp"))
    try:
        yield path
    finally:
        if not os.environ.get("HANDOFF_TEST_KEEP"):
            shutil.rmtree(path, ignore_errors=True)


def test_listener_only_while_paired_and_lan_discovery_on(root: Path) -> None:
    server = ServerProcess(root / "srv").start()
    port = free_port()
    lane = free_port()
    while lane == port:
        lane = free_port()
    # The LAN lane's listener follows the signaling listener (docs/transport.md §5).
    env = {"HANDOFF_SIGNALING_PORT": str(port), "HANDOFF_LANE_PORT": str(lane)}
    d = DaemonProcess(root / "d", env=env)
    try:
        create_account(server.data, "ana")
        d.home.mkdir(mode=0o700)
        d.start()
        assert d.proc is not None
        pid = d.proc.pid
        # The engine is up (before the fix it bound the port before saying so) ...
        until(lambda: "handoff engine ready" in d.log.read_text(), "the engine")
        # ... but an unpaired daemon has nothing to answer: no listening TCP socket at all.
        assert listening_ports(pid) == set()
        assert not connects(port)

        url, _ = cli_invite(server.data, "ana")
        status, body = d.curl("POST", "/v1/pair", {"invite": url, "name": "laptop"})
        assert status == 200, body
        until(lambda: listening_ports(pid) == {port, lane}, "the listener after pairing")
        assert connects(port)
        assert connects(lane)

        status, body = d.curl("PATCH", "/v1/settings", {"lan_discovery": False})
        assert status == 200, body
        until(lambda: listening_ports(pid) == set(), "the listener to stop")
        assert not connects(port)
        assert not connects(lane)

        status, body = d.curl("PATCH", "/v1/settings", {"lan_discovery": True})
        assert status == 200, body
        until(lambda: listening_ports(pid) == {port, lane}, "the listener again")
        assert connects(port)

        # Restarted paired with LAN discovery off: never listens.
        status, body = d.curl("PATCH", "/v1/settings", {"lan_discovery": False})
        assert status == 200, body
        d.stop()
        log_before = len(d.log.read_text())
        d.start()
        assert d.proc is not None
        pid = d.proc.pid
        until(lambda: "handoff engine ready" in d.log.read_text()[log_before:], "the engine")
        status, body = d.curl("GET", "/v1/status")
        assert status == 200, body
        assert listening_ports(pid) == set()
        assert not connects(port)
    finally:
        d.kill()
        server.stop()
