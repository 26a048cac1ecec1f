"""config.toml keeps the user's comments and order when settings change (tomlkit)."""

from __future__ import annotations

import os
import signal
import tomllib
from collections.abc import Callable

import pytest

from handoffd.config import Settings, dumps_toml, load_settings, show_value, update_toml
from tests.cli.test_cli import handoff
from tests.daemon.helpers import DaemonProcess
from tests.support.waiting import until

COMMENTED = """\
# My handoff settings. Hand-edited; please keep my notes.

# What this machine is called on my other devices:
device_name = "study-pc"   # renamed in March

# Off while travelling.
lan_discovery = true

accept_types = ["message", "url"]   # no documents here
inbox_ttl = 86400
"""


def test_update_keeps_comments_order_and_untouched_lines() -> None:
    table = {"device_name": "study-pc", "lan_discovery": False, "accept_types": ["message"]}
    out = update_toml(COMMENTED, {**table, "inbox_ttl": 86400, "auto_accept": True})
    assert out.startswith("# My handoff settings. Hand-edited; please keep my notes.\n")
    for line in COMMENTED.splitlines():
        if not line.startswith(("lan_discovery", "accept_types")):
            assert line in out.splitlines(), line  # byte for byte
    assert "lan_discovery = false" in out.splitlines()
    assert 'accept_types = ["message"]   # no documents here' in out.splitlines()
    assert out.splitlines()[-1] == "auto_accept = true"  # a new key goes at the end
    keys = [line.split(" =")[0] for line in out.splitlines() if " = " in line]
    assert keys == ["device_name", "lan_discovery", "accept_types", "inbox_ttl", "auto_accept"]
    assert tomllib.loads(out)["lan_discovery"] is False
    # Unparseable text: a fresh document (the daemon could not have loaded that one either).
    fresh = update_toml("device_name = [", {"device_name": "x"})
    assert tomllib.loads(fresh) == {"device_name": "x"}
    assert fresh.startswith("# handoffd settings")


def test_new_documents_round_trip_and_show_values() -> None:
    s = Settings(device_name='odd "name" \\ é', accept_types=("message", "url"))
    assert Settings.from_mapping(tomllib.loads(dumps_toml(s.to_json()))) == s
    text = dumps_toml({"raw": "a\x01b\x7f"})  # control characters escaped
    assert tomllib.loads(text) == {"raw": "a\x01b\x7f"}
    with pytest.raises(TypeError):
        dumps_toml({"x": float("nan")})
    assert show_value(True) == "true"  # noqa: FBT003
    assert show_value(False) == "false"  # noqa: FBT003
    assert show_value(["message", "url"]) == "message,url"
    assert show_value(3600) == "3600"


def test_handoff_settings_keeps_the_users_comments(
    daemons: Callable[..., DaemonProcess],
) -> None:
    d = daemons("a")
    config = d.home / "config.toml"
    config.write_text(COMMENTED)
    config.chmod(0o600)
    d.start()
    done = handoff(d.home, "settings", "lan_discovery", "false")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "lan_discovery = false\n"
    text = config.read_text()
    assert text.startswith(COMMENTED.split("lan_discovery")[0])  # comments and name untouched
    assert "# Off while travelling.\nlan_discovery = false\n" in text
    assert 'accept_types = ["message", "url"]   # no documents here' in text
    assert load_settings(config).lan_discovery is False
    assert os.stat(config).st_mode & 0o777 == 0o600
    listing = handoff(d.home, "settings")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert "handoff_enabled = true" in lines
    assert "lan_discovery = false" in lines
    assert "accept_types = message,url" in lines
    assert "True" not in listing.stdout
    assert "False" not in listing.stdout

    # A hand edit read on SIGHUP, then a change through the CLI: both the comment and
    # the edit survive.
    config.write_text(text.replace("inbox_ttl = 86400", "inbox_ttl = 7200  # two hours"))
    assert d.proc is not None
    os.kill(d.proc.pid, signal.SIGHUP)
    until(
        lambda: "inbox_ttl = 7200" in handoff(d.home, "settings", "inbox_ttl").stdout,
        "the daemon to re-read its settings",
    )
    assert handoff(d.home, "settings", "device_name", "den").returncode == 0
    text = config.read_text()
    assert "inbox_ttl = 7200  # two hours" in text
    assert 'device_name = "den"   # renamed in March' in text
