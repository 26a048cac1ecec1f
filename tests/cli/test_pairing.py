"""Pairing from what the person sees, with the real `handoff` and `handoff-server` executables:
the printed command works as is, a code alone works with a remembered server, and every wrong
input gets its cause in words."""

from __future__ import annotations

import json
import re
import shlex
import socket
from collections.abc import Callable
from pathlib import Path

from handoffd.wire.invite import CODE_ALPHABET, TAG_LEN
from tests.cli.run import fields, handoff, one_error_line, server_cli
from tests.daemon.helpers import DaemonProcess
from tests.server.helpers import ServerProcess, create_account

EXPIRY = re.compile(r"^in \d+ min \(at \d\d:\d\d\), single use$")


def _run_printed(home: Path, command: str) -> str:
    """Run ``handoff pair ...`` as printed (only --home added); stdout."""
    argv = shlex.split(command)
    assert argv[:2] == ["handoff", "pair"], command
    done = handoff(home, *argv[1:])
    assert done.returncode == 0, done.stderr
    return done.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_printed_commands_pair_and_status_names_the_account(
    daemons: Callable[..., DaemonProcess], server: ServerProcess
) -> None:
    create_account(server.data, "alice")
    out = server_cli(server.data, "invite", "alice", "--no-qr")
    assert out.returncode == 0, out.stderr
    shown = fields(out.stdout)
    assert EXPIRY.match(shown["expires"]), shown
    # One word: the code, its pin tag, the server; no 64-hex fingerprint to type.
    command = shown["pair"]
    assert command.startswith("handoff pair ")
    assert "--fingerprint" not in command
    code = command.split()[2]
    assert code.endswith("@" + server.url.removeprefix("https://"))
    assert len(code.split("@")[0].replace("-", "")) == 12 + TAG_LEN
    a = daemons("a").start()
    assert "in account alice (" in _run_printed(a.home, command)
    status = handoff(a.home, "status")
    assert re.search(r"account\s+alice \(", status.stdout), status.stdout
    assert json.loads(handoff(a.home, "status", "--json").stdout)["account_name"] == "alice"

    # The device's own invite prints a working command too, and the same expiry wording.
    inv = handoff(a.home, "invite")
    assert inv.returncode == 0, inv.stderr
    mine = fields(inv.stdout)
    assert EXPIRY.match(mine["expires"]), mine
    b = daemons("b").start()
    _run_printed(b.home, mine["pair"])
    listed = json.loads(handoff(a.home, "devices", "--json").stdout)["devices"]
    assert len({d["device_id"] for d in listed}) == 2
    as_json = json.loads(handoff(a.home, "invite", "--json").stdout)
    assert as_json["command"].startswith("handoff pair ")


def test_wrong_inputs_get_their_cause_in_words(
    daemons: Callable[..., DaemonProcess], server: ServerProcess
) -> None:
    create_account(server.data, "bob")
    d = daemons("a").start()
    assert "not an invite code" in one_error_line(handoff(d.home, "pair", "garbage"))
    pasted = one_error_line(handoff(d.home, "pair", server.url))
    assert "web address, not an invite" in pasted
    bare = one_error_line(handoff(d.home, "pair", "K7QF-2M9X-HT4P"))
    assert "does not say which server" in bare

    host_port = server.url.removeprefix("https://")
    closed = _free_port()
    refused = one_error_line(handoff(d.home, "pair", f"K7QF-2M9X-HT4P-0000@127.0.0.1:{closed}"))
    assert "connection refused" in refused
    plain = one_error_line(
        handoff(d.home, "pair", "K7QF-2M9X-HT4P", "--server", f"http://{host_port}")
    )
    assert "may speak TLS" in plain
    assert f"https://{host_port}" in plain
    # An old-style code with the https server and no pin: the self-signed certificate is not
    # trusted, and the message says what to do instead.
    untrusted = one_error_line(handoff(d.home, "pair", "K7QF-2M9X-HT4P", "--server", server.url))
    assert "not trusted" in untrusted
    assert "CODE@server" in untrusted

    # A real code with a wrong pin tag: nothing is sent, the invite stays usable.
    command = fields(server_cli(server.data, "invite", "bob", "--no-qr").stdout)["pair"]
    code, _, where = command.split()[2].partition("@")
    last = code[-1]
    wrong = code[:-1] + next(c for c in CODE_ALPHABET if c != last)
    mismatch = one_error_line(handoff(d.home, "pair", f"{wrong}@{where}"))
    assert "does not match the code" in mismatch
    _run_printed(d.home, command)
    assert json.loads(handoff(d.home, "status", "--json").stdout)["paired"] is True
    again = one_error_line(handoff(d.home, "pair", command.split()[2]))
    assert "already paired" in again


def test_http_server_against_https_says_not_tls(
    daemons: Callable[..., DaemonProcess], short_dir: Path
) -> None:
    srv = ServerProcess(short_dir / "plain", extra=("--insecure-http",)).start()
    try:
        d = daemons("a").start()
        host_port = srv.url.removeprefix("http://")
        done = one_error_line(handoff(d.home, "pair", "K7QF-2M9X-HT4P-0000@" + host_port))
        assert "does not speak TLS" in done
        assert f"http://{host_port}" in done
        # The http server's own command pairs (no tag: nothing to pin).
        create_account(srv.data, "carol")
        command = fields(server_cli(srv.data, "invite", "carol", "--no-qr").stdout)["pair"]
        assert "@http://" in command
        assert "carol" in _run_printed(d.home, command)
    finally:
        srv.stop()
