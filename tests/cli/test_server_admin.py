"""`handoff-server` administration with the real executable: accounts created with a piped or
missing password (no traceback), --version, list, passwd, delete with confirmation; and the one
log format of daemon and server."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from handoffd import __version__
from handoffd.server.store import Store
from tests.cli.run import server_cli
from tests.daemon.helpers import DaemonProcess
from tests.server.helpers import ServerProcess

LOG_LINE = re.compile(r'^ts=\S+Z level=(debug|info|warning|error|critical) logger=\S+ event="')


def _error(done: object) -> str:
    assert getattr(done, "returncode", None) == 1
    err: str = getattr(done, "stderr", "")
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_accounts_from_the_command_line(short_dir: Path) -> None:
    data = short_dir / "data"
    version = server_cli(data, "--version")
    assert version.stdout.strip() == f"handoff-server {__version__}"

    piped = server_cli(data, "account", "create", "alice", stdin="s3cret pass\n")
    assert piped.returncode == 0, piped.stderr
    alice = piped.stdout.strip()
    none = _error(server_cli(data, "account", "create", "bob"))  # stdin: /dev/null
    assert "no password" in none
    assert "--password-file" in none
    assert server_cli(data, "account", "create", "carol", "--no-password").returncode == 0

    listed = json.loads(server_cli(data, "account", "list", "--json").stdout)
    assert [(a["name"], a["web_login"]) for a in listed] == [("alice", True), ("carol", False)]
    table = server_cli(data, "account", "list").stdout
    assert table.splitlines()[0].split()[:2] == ["NAME", "ID"]
    assert alice in table

    assert server_cli(data, "account", "passwd", "carol", stdin="new one\n").returncode == 0
    store = Store.open(data)
    try:
        assert store.check_login("carol", "new one") is not None
        assert store.check_login("alice", "s3cret pass") is not None
    finally:
        store.close()
    assert "no account" in _error(server_cli(data, "account", "passwd", "dave", stdin="x\n"))

    refused = _error(server_cli(data, "account", "delete", "alice"))
    assert "add --yes" in refused
    assert server_cli(data, "account", "delete", "alice", "--yes").returncode == 0
    names = [a["name"] for a in json.loads(server_cli(data, "account", "list", "--json").stdout)]
    assert names == ["carol"]


def test_daemon_and_server_log_one_format(
    daemons: Callable[..., DaemonProcess], short_dir: Path
) -> None:
    srv = ServerProcess(short_dir / "logs").start()
    d = daemons("a").start()
    d.stop()
    srv.stop()
    for log in (srv.log, d.log):
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        assert lines, log
        for line in lines:
            assert LOG_LINE.match(line), line
