"""The `handoff` CLI against real daemon (and server) processes."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from handoffd import cli
from handoffd.console import clean, table
from tests.cli import run
from tests.daemon.helpers import DaemonProcess
from tests.server.helpers import ServerProcess, cli_invite, create_account


def handoff(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run.handoff(home, *args, stdin=stdin)


def test_not_running_is_one_clear_line(short_dir: Path) -> None:
    done = handoff(short_dir / "nobody", "status")
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "not running" in lines[0]
    assert "handoffd" in lines[0]


def test_status_devices_sessions_settings(daemons: Callable[..., DaemonProcess]) -> None:
    d = daemons("a").start()
    st = handoff(d.home, "status")
    assert st.returncode == 0, st.stderr
    assert "paired" in st.stdout
    assert "no (run `handoff pair" in st.stdout
    js = json.loads(handoff(d.home, "status", "--json").stdout)
    assert js["paired"] is False
    assert len(js["device_id"]) == 32

    assert json.loads(handoff(d.home, "sessions", "--json").stdout) == []
    status, pub = d.curl("POST", "/v1/sessions", {"app_id": "org.x", "title": "Draft", "context": {},
                                          "items": [{"type": "message", "name": "m", "text": "hi"}]})  # fmt: skip
    assert status == 201, pub
    sid = pub["id"]
    listing = handoff(d.home, "sessions")
    assert sid in listing.stdout
    rows = json.loads(handoff(d.home, "sessions", "--json").stdout)
    assert [r["id"] for r in rows] == [sid]

    assert handoff(d.home, "settings", "handoff_enabled", "false").returncode == 0
    got = json.loads(handoff(d.home, "settings", "handoff_enabled", "--json").stdout)
    assert got == {"handoff_enabled": False}
    bad = handoff(d.home, "settings", "handoff_enabled", "maybe")
    assert bad.returncode == 1
    assert len(bad.stderr.strip().splitlines()) == 1
    unknown = handoff(d.home, "settings", "nope", "1")
    assert unknown.returncode == 1
    assert "nope" in unknown.stderr

    devices = handoff(d.home, "devices", "--json")
    assert devices.returncode == 0, devices.stderr


def test_pair_invite_devices_revoke(
    daemons: Callable[..., DaemonProcess], server: ServerProcess
) -> None:
    create_account(server.data, "cli")
    url, _code = cli_invite(server.data, "cli")
    a = daemons("a").start()
    b = daemons("b").start()
    # the token comes on stdin, never in argv
    done = handoff(a.home, "pair", "-", "--name", "laptop", stdin=url + "\n")
    assert done.returncode == 0, done.stderr
    assert "paired" in done.stdout
    inv = handoff(a.home, "invite", "--json")
    assert inv.returncode == 0, inv.stderr
    invite = json.loads(inv.stdout)
    drawn = handoff(a.home, "invite")
    assert "▀" in drawn.stdout or "█" in drawn.stdout  # the QR, drawn in the terminal
    assert handoff(b.home, "pair", invite["url"], "--name", "desk").returncode == 0
    listing = handoff(a.home, "devices")
    assert "laptop (this device)" in listing.stdout
    assert "desk" in listing.stdout
    rows = json.loads(handoff(a.home, "devices", "--json").stdout)["devices"]
    assert {r["name"] for r in rows} == {"laptop", "desk"}
    unknown = handoff(a.home, "revoke", "nosuch")
    assert unknown.returncode == 1
    assert "no device" in unknown.stderr
    revoked = handoff(a.home, "revoke", "desk", "--yes")
    assert revoked.returncode == 0, revoked.stderr
    rows = json.loads(handoff(a.home, "devices", "--json").stdout)["devices"]
    assert [r["revoked"] for r in rows if r["name"] == "desk"] == [True]


def test_table_and_clean() -> None:
    assert clean("a\x1b[2Jb\x07") == "a?[2Jb?"
    out = table([("x", 1), ("long name", 22)], ("NAME", "N"))
    assert out.splitlines()[0] == "NAME       N"
    assert out.splitlines()[2] == "long name  22"


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("handoff: ")
    return lines[0]


def test_errors_settings_and_empty_listings(daemons: Callable[..., DaemonProcess]) -> None:
    d = daemons("a").start()
    assert "not paired" in _one_error_line(handoff(d.home, "invite"))
    assert "no device 'nosuch'" in _one_error_line(handoff(d.home, "revoke", "nosuch"))
    assert "no invite on stdin" in _one_error_line(handoff(d.home, "pair", "-", stdin=""))
    no_server = _one_error_line(handoff(d.home, "pair", "-", stdin="K7QF-2M9X-HT4P\n"))
    assert "does not say which server" in no_server

    # Values take the type of the setting; the daemon validates the rest.
    assert handoff(d.home, "settings", "inbox_ttl", "3600").returncode == 0
    assert handoff(d.home, "settings", "accept_types", "message, url").returncode == 0
    assert handoff(d.home, "settings", "device_name", "1234").returncode == 0
    got = json.loads(handoff(d.home, "settings", "--json").stdout)
    assert got["inbox_ttl"] == 3600
    assert got["accept_types"] == ["message", "url"]
    assert got["device_name"] == "1234"
    assert "whole number" in _one_error_line(handoff(d.home, "settings", "inbox_ttl", "soon"))
    refused = _one_error_line(handoff(d.home, "settings", "device_name", "evil\x1b[2J"))
    assert "control characters" in refused
    assert "\x1b" not in refused
    listing = handoff(d.home, "settings", "accept_types")
    assert listing.stdout == "accept_types = message,url\n"

    inbox = handoff(d.home, "inbox")
    assert inbox.returncode == 0, inbox.stderr
    assert inbox.stdout.split() == ["ID", "APP", "TITLE", "FROM", "STATE", "ITEMS", "RECEIVED"]
    assert json.loads(handoff(d.home, "inbox", "--json").stdout) == []
    assert "1234 (" in handoff(d.home, "status").stdout


def test_home_from_the_environment(daemons: Callable[..., DaemonProcess]) -> None:
    d = daemons("a").start()
    done = subprocess.run(
        [run.HANDOFF, "status", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "HANDOFF_HOME": str(d.home)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["paired"] is False


def test_subcommand_modules_register_commands(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("tests.cli.plugin_example",))
    assert cli.main(["hello", "world"]) == 0
    assert capsys.readouterr().out == "hello world\n"
    monkeypatch.setattr(cli, "COMMAND_MODULES", ())
    with pytest.raises(SystemExit) as exc:
        cli.main(["hello", "world"])
    assert exc.value.code == 2  # a usage error without the module


def test_state_text_says_attempt_next_try_and_reason() -> None:
    from handoffd.console import state_text

    soon = time.time() + 8.4
    text = state_text("retrying", 3, soon, {"code": "no-path", "message": "x"})
    assert text in (
        "retrying (attempt 3, next in 8s: no-path)",
        "retrying (attempt 3, next in 7s: no-path)",
    )
    refused = {"code": "peer-refused", "message": "x", "reason": "cert-revoked"}
    assert state_text("failed", 1, None, refused) == "failed: cert-revoked"
    assert state_text("transferring", 1, None, None) == "transferring"
