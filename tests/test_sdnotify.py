"""sd_notify over a real datagram socket, and silence without NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from handoffd.sdnotify import SdNotifier


def test_messages_arrive_and_watchdog_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(os.fspath(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", os.fspath(path))
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    try:
        n = SdNotifier.from_env()
        assert n.watchdog_interval() == 30.0  # the timeout; the daemon pings at half of it
        assert n.ready()
        assert sock.recv(4096) == b"READY=1"
        assert n.reloading()
        msg = sock.recv(4096).decode()
        assert msg.startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert int(msg.rsplit("=", 1)[1]) > 0
        assert n.status("two\nlines")
        assert sock.recv(4096) == b"STATUS=two lines"
        n.close()
    finally:
        sock.close()


def test_nothing_happens_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = SdNotifier.from_env()
    assert not n.ready()
    assert n.watchdog_interval() is None
