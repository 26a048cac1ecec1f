"""sd_notify over real datagram sockets bound by the test; silence without NOTIFY_SOCKET."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from handoffd.sdnotify import SdNotifier


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket standing in for the service manager, and its address."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(os.fspath(path))
    sock.settimeout(5)
    yield sock, os.fspath(path)
    sock.close()


def test_each_message_arrives(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    n = SdNotifier.from_env({"NOTIFY_SOCKET": path})
    assert n.ready()
    assert sock.recv(4096) == b"READY=1"
    assert n.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    assert n.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert n.status("two\nlines")
    assert sock.recv(4096) == b"STATUS=two lines"
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    reloading, stamp = sock.recv(4096).decode().split("\n")
    assert reloading == "RELOADING=1"
    assert stamp.startswith("MONOTONIC_USEC=")
    assert before <= int(stamp.split("=", 1)[1]) <= after
    assert n.notify(STATUS="busy", ERRNO=0)
    assert sock.recv(4096) == b"STATUS=busy\nERRNO=0"
    n.close()
    n.close()
    assert not n.enabled
    assert not n.ready()  # closed: a no-op


def test_bad_field_names_are_a_programming_error(receiver: tuple[socket.socket, str]) -> None:
    n = SdNotifier.from_env({"NOTIFY_SOCKET": receiver[1]})
    with pytest.raises(ValueError, match="field name"):
        n.notify(**{"READY=1\nSTOPPING": 1})
    with pytest.raises(ValueError, match="field name"):
        n.notify(ready=1)
    n.close()


def test_abstract_socket() -> None:
    name = f"handoffd-test-{secrets.token_hex(8)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        n = SdNotifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert sock.recv(4096) == b"READY=1"
        n.close()
    finally:
        sock.close()


def test_from_os_environ_and_unset(
    receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver[1])
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = SdNotifier.from_env(unset_environment=True)
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        assert name not in os.environ
    assert n.watchdog_interval() == 15.0
    assert n.ready()
    assert receiver[0].recv(4096) == b"READY=1"
    n.close()


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),  # half the timeout
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], interval: float | None) -> None:
    assert SdNotifier.from_env(env).watchdog_interval() == interval


def test_nothing_happens_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = SdNotifier.from_env()
    assert not n.enabled
    assert not n.ready()
    assert not n.notify(STATUS="x")
    assert n.watchdog_interval() is None
    n.close()


@pytest.mark.parametrize("value", ["", "relative/notify.sock", "vsock:2:1234", "@"])
def test_unusable_socket_values_mean_silence(value: str) -> None:
    n = SdNotifier.from_env({"NOTIFY_SOCKET": value})
    assert not n.enabled
    assert not n.ready()


def test_send_failure_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = SdNotifier.from_env({"NOTIFY_SOCKET": os.fspath(tmp_path / "gone.sock")})
    with caplog.at_level(logging.DEBUG, logger="handoffd.sdnotify"):
        assert not n.ready()
        assert not n.watchdog()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per failing stretch, not once per ping
    assert "sd_notify failed" in warnings[0].getMessage()
    n.close()


def test_a_full_queue_does_not_block(receiver: tuple[socket.socket, str]) -> None:
    # The receiver never reads: a blocking socket would hang here (pytest-timeout fails it).
    n = SdNotifier.from_env({"NOTIFY_SOCKET": receiver[1]})
    assert n.status("first")
    sent = 0
    while n.status("x" * 1024):
        sent += 1
        assert sent < 1_000_000, "the queue never filled"
    assert receiver[0].recv(4096) == b"STATUS=first"  # what was queued is intact
    n.close()
