"""Daemon lifecycle with real processes: restart, lock, SIGHUP, crash, sd_notify, other uids."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.processes import CURL, DaemonProcess, accepts

Factory = Callable[..., DaemonProcess]


def test_settings_persist_across_restart(daemons: Factory) -> None:
    d = daemons().start()
    status, body = d.curl(
        "PATCH",
        "/v1/settings",
        {
            "device_name": 'Desk "top"',
            "auto_accept": False,
            "accept_types": ["message", "url"],
            "unicast_peers": ["192.0.2.7:7443"],
        },
    )
    assert status == 200, body
    config = d.paths.config_toml
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert d.stop() == 0
    assert not d.socket.exists()  # removed on a clean stop

    d.start()
    _, body = d.curl("GET", "/v1/settings")
    assert body["device_name"] == 'Desk "top"'
    assert body["auto_accept"] is False
    assert body["accept_types"] == ["message", "url"]
    assert body["unicast_peers"] == ["192.0.2.7:7443"]
    _, status_body = d.curl("GET", "/v1/status")
    assert status_body["device_name"] == 'Desk "top"'


def test_sighup_reloads_config_and_keeps_old_on_error(daemons: Factory) -> None:
    d = daemons().start()
    config = d.paths.config_toml
    config.write_text(
        config.read_text().replace("handoff_enabled = true", "handoff_enabled = false")
    )
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    assert _eventually(lambda: d.curl("GET", "/v1/settings")[1]["handoff_enabled"] is False)

    config.write_text("handoff_enabled = 12\n")  # invalid: the old settings stay
    d.proc.send_signal(signal.SIGHUP)
    assert _eventually(lambda: "settings not reloaded" in d.log.read_text())
    assert d.curl("GET", "/v1/settings")[1]["handoff_enabled"] is False
    assert d.curl("GET", "/v1/status")[0] == 200


def test_second_daemon_on_same_home_refuses(daemons: Factory) -> None:
    d = daemons().start()
    second = subprocess.run(
        [sys.executable, "-m", "handoffd.daemon", "--home", str(d.home)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == 1
    assert "already running" in second.stderr
    assert "already-running" in second.stderr
    assert d.curl("GET", "/v1/status")[0] == 200  # the first one is untouched


def test_kill_9_and_restart_keeps_identity_and_sessions(daemons: Factory) -> None:
    d = daemons().start()
    _, before = d.curl("GET", "/v1/status")
    _, session = d.curl(
        "POST",
        "/v1/sessions",
        {
            "app_id": "org.example.chat",
            "title": "kept",
            "items": [{"type": "message", "name": "m", "text": "hello"}],
        },
    )
    d.kill()
    assert d.socket.exists()  # the crash left a stale socket behind
    assert not accepts(d.socket)

    d.start()
    _, after = d.curl("GET", "/v1/status")
    assert after["device_id"] == before["device_id"]
    assert after["pid"] != before["pid"]
    status, got = d.curl("GET", f"/v1/sessions/{session['id']}")
    assert status == 200
    assert got["items"][0]["text"] == "hello"
    assert stat.S_IMODE(d.paths.device_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(d.paths.state_db.stat().st_mode) == 0o600
    assert stat.S_IMODE(d.socket.stat().st_mode) == 0o600
    assert stat.S_IMODE(d.paths.runtime_dir.stat().st_mode) == 0o700


def test_ready_only_once_the_socket_accepts(daemons: Factory, short_dir: Path) -> None:
    notify_path = short_dir / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(os.fspath(notify_path))
    notify.settimeout(30)
    try:
        d = daemons(env={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"})
        d.spawn()
        messages: list[str] = []
        while "READY=1" not in messages:
            message = notify.recv(4096).decode()
            messages.append(message)
            if message == "READY=1":
                # At the moment READY arrives, the control socket must already accept.
                assert accepts(d.socket)
        assert any(m.startswith("STATUS=starting") for m in messages[: messages.index("READY=1")])
        # Watchdog pings at half the interval (0.2 s): a couple arrive soon.
        seen = set()
        while "WATCHDOG=1" not in seen:
            seen.add(notify.recv(4096).decode())
        assert d.proc is not None
        d.proc.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in seen:
            seen.add(notify.recv(4096).decode())
        assert d.proc.wait(timeout=20) == 0
    finally:
        notify.close()


def _as_nobody(sock: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            CURL,
            "-sS",
            "--max-time",
            "10",
            "--unix-socket",
            str(sock),
            "http://handoff/v1/status",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")
def test_other_uid_is_refused_by_mode_and_by_peercred(daemons: Factory, short_dir: Path) -> None:
    d = daemons().start()
    # Layer 1: the 0700 directories keep another uid from reaching the socket at all.
    refused = _as_nobody(d.socket)
    assert refused.returncode != 0
    assert refused.stdout == b""
    assert b"Permission denied" in refused.stderr or b"Couldn't connect" in refused.stderr

    # Layer 2: with the path opened up, the daemon itself refuses the peer (SO_PEERCRED).
    for path in (short_dir, d.home, d.paths.runtime_dir):
        os.chmod(path, 0o711)  # noqa: S103 - the point of the test
    os.chmod(d.socket, 0o666)  # noqa: S103 - the point of the test
    refused = _as_nobody(d.socket)
    assert refused.returncode != 0
    assert b'"device_id"' not in refused.stdout
    assert _eventually(lambda: "control connection refused" in d.log.read_text())
    # Our own uid still gets answers.
    assert d.curl("GET", "/v1/status")[0] == 200


def _eventually(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()
