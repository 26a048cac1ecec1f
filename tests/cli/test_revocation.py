"""Leaving and revoking with the real `handoff` executable: unpair and pair again, confirmation,
self-revocation only with --self, a revoked device's send refused at once, a rename that peers
see, and --to without regard to case."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path

from tests.cli.run import eventually, fields, handoff, one_error_line, server_cli
from tests.daemon.helpers import DaemonProcess
from tests.server.helpers import ServerProcess, create_account


def _pair(home: Path, command: str) -> None:
    done = handoff(home, *shlex.split(command)[1:])
    assert done.returncode == 0, done.stderr


def _status(home: Path) -> dict[str, object]:
    done = handoff(home, "status", "--json")
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def _devices(home: Path) -> list[dict[str, object]]:
    done = handoff(home, "devices", "--json")
    assert done.returncode == 0, done.stderr
    listed: list[dict[str, object]] = json.loads(done.stdout)["devices"]
    return listed


def _two_devices(
    daemons: Callable[..., DaemonProcess], server: ServerProcess, account: str
) -> tuple[DaemonProcess, DaemonProcess]:
    create_account(server.data, account)
    a, b = daemons("a").start(), daemons("b").start()
    _pair(a.home, fields(server_cli(server.data, "invite", account, "--no-qr").stdout)["pair"])
    assert handoff(a.home, "settings", "device_name", "laptop").returncode == 0
    _pair(b.home, fields(handoff(a.home, "invite").stdout)["pair"])
    assert handoff(b.home, "settings", "device_name", "Phone").returncode == 0
    return a, b


def _publish(d: DaemonProcess) -> str:
    status, pub = d.curl("POST", "/v1/sessions", {"app_id": "org.x", "title": "Draft", "context": {},
                                                  "items": [{"type": "message", "name": "m", "text": "hi"}]})  # fmt: skip
    assert status == 201, pub
    return str(pub["id"])


def test_unpair_asks_then_pairs_again_with_the_code_alone(
    daemons: Callable[..., DaemonProcess], server: ServerProcess
) -> None:
    a, b = _two_devices(daemons, server, "unpair")
    me = str(_status(b.home)["device_id"])
    refused = one_error_line(handoff(b.home, "unpair"))  # no terminal, no --yes
    assert "add --yes" in refused
    assert _status(b.home)["paired"] is True
    done = handoff(b.home, "unpair", "--yes")
    assert done.returncode == 0, done.stderr
    assert "revoked at the server" in done.stdout
    assert _status(b.home)["paired"] is False
    listed = {d["device_id"]: d for d in _devices(a.home)}
    assert listed[me]["revoked"] is True
    # The server is remembered: the code typed alone (no @server) pairs again.
    command = fields(handoff(a.home, "invite").stdout)["pair"]
    bare = command.split()[2].split("@")[0]
    again = handoff(b.home, "pair", bare)
    assert again.returncode == 0, again.stderr
    assert _status(b.home)["paired"] is True
    assert "not paired" in one_error_line(handoff(daemons("c").start().home, "unpair", "--yes"))


def test_revoke_confirms_self_needs_a_flag_and_the_revoked_device_knows(
    daemons: Callable[..., DaemonProcess], server: ServerProcess
) -> None:
    a, b = _two_devices(daemons, server, "revoke")
    itself = one_error_line(handoff(b.home, "revoke", "phone", "--yes"))
    assert "is this device" in itself
    assert "--self" in itself
    assert _status(b.home)["revoked"] is False
    unconfirmed = one_error_line(handoff(a.home, "revoke", "phone"))
    assert "add --yes" in unconfirmed
    assert "no device 'tablet'" in one_error_line(handoff(a.home, "revoke", "tablet", "--yes"))
    done = handoff(a.home, "revoke", "PHONE", "--yes")  # any case
    assert done.returncode == 0, done.stderr
    # The server tells the revoked device at once; its next send fails with that cause.
    eventually(lambda: _status(b.home)["revoked"] is True, "b to know it is revoked")
    sent = one_error_line(handoff(b.home, "send", _publish(b), "--to", "laptop", "--no-wait"))
    assert "this device was revoked" in sent
    assert "YES" in handoff(b.home, "status").stdout


def test_self_revocation_with_the_flag(
    daemons: Callable[..., DaemonProcess], server: ServerProcess
) -> None:
    _a, b = _two_devices(daemons, server, "selfrevoke")
    done = handoff(b.home, "revoke", "phone", "--self", "--yes")
    assert done.returncode == 0, done.stderr
    eventually(lambda: _status(b.home)["revoked"] is True, "b revoked")


def test_rename_reaches_peers_and_to_ignores_case(
    daemons: Callable[..., DaemonProcess], server: ServerProcess
) -> None:
    a, b = _two_devices(daemons, server, "rename")
    assert handoff(a.home, "settings", "device_name", "Work Laptop").returncode == 0
    names = {d["name"] for d in _devices(b.home)}
    assert "Work Laptop" in names
    assert "laptop" not in names
    started = handoff(b.home, "send", _publish(b), "--to", "work LAPTOP", "--no-wait")
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip()
    # Two devices whose names differ only in case: a name in a third case is ambiguous.
    c = daemons("c").start()
    _pair(c.home, fields(handoff(a.home, "invite").stdout)["pair"])
    assert handoff(c.home, "settings", "device_name", "work laptop").returncode == 0
    eventually(lambda: "work laptop" in {d["name"] for d in _devices(b.home)}, "c's name")
    ambiguous = one_error_line(handoff(b.home, "send", _publish(b), "--to", "WORK LAPTOP"))
    assert "several devices" in ambiguous
    exact = handoff(b.home, "send", _publish(b), "--to", "work laptop", "--no-wait")
    assert exact.returncode == 0, exact.stderr
