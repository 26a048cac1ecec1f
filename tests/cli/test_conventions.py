"""CLI conventions with the real `handoff` executable: --home on either side, --version,
completion from the parser, settings as written in config, events, the cached device list,
Ctrl-C during send, no platformdirs warning; and the progress line (pure)."""

from __future__ import annotations

import json
import os
import select
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from handoffd import __version__
from handoffd.console import Rate, progress_line
from tests.cli.run import (
    HANDOFF,
    eventually,
    fields,
    handoff,
    no_xdg_env,
    one_error_line,
    server_cli,
)
from tests.daemon.helpers import DaemonProcess
from tests.server.helpers import ServerProcess, create_account


def _pair(home: Path, command: str) -> None:
    done = handoff(home, *shlex.split(command)[1:])
    assert done.returncode == 0, done.stderr


def _read_line(proc: subprocess.Popen[str], stream: str, timeout: float = 30.0) -> str:
    pipe = proc.stdout if stream == "out" else proc.stderr
    assert pipe is not None
    ready, _, _ = select.select([pipe], [], [], timeout)
    assert ready, f"no line on {stream} in time"
    return pipe.readline()


def test_home_version_completion_settings_and_no_warning(
    daemons: Callable[..., DaemonProcess],
) -> None:
    d = daemons("a").start()
    after = handoff(d.home, "status", "--json", home_after=True)
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout)["paired"] is False
    version = handoff(None, "--version")
    assert version.stdout.strip() == f"handoff {__version__}"

    bash = handoff(None, "completion", "bash")
    assert bash.returncode == 0, bash.stderr
    for word in ("unpair", "events", "completion", "--home", "--yes"):
        assert word in bash.stdout, word
    zsh = handoff(None, "completion", "zsh")
    assert "#compdef handoff" in zsh.stdout

    assert handoff(d.home, "settings", "lan_discovery", "off").returncode == 0
    shown = handoff(d.home, "settings")
    assert "lan_discovery = false" in shown.stdout
    assert "handoff_enabled = true" in shown.stdout
    assert "True" not in shown.stdout

    env = {**no_xdg_env(), "HOME": str(d.home)}
    lone = handoff(None, "status", env=env)
    assert "not running" in one_error_line(lone)
    assert "Warning" not in lone.stderr


def test_events_stream_text_and_json(daemons: Callable[..., DaemonProcess]) -> None:
    d = daemons("a").start()
    for as_json in (True, False):
        argv = [HANDOFF, "--home", str(d.home), "events", *(["--json"] if as_json else [])]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            seen = ""

            def changed(proc: subprocess.Popen[str] = proc) -> bool:
                nonlocal seen
                # The stream may start after the first change: change again until one is seen.
                assert handoff(d.home, "settings", "inbox_ttl", "3600").returncode == 0
                assert proc.stdout is not None
                ready, _, _ = select.select([proc.stdout], [], [], 1.0)
                if ready:
                    seen = _read_line(proc, "out")
                return "settings.changed" in seen

            eventually(changed, "a settings.changed event")
            if as_json:
                assert json.loads(seen)["type"] == "settings.changed"
            else:
                assert seen.split()[1] == "settings.changed"
                assert "changed=" in seen
        finally:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=30)  # waits, and closes the pipes


def test_devices_marks_the_cache_and_ctrl_c_in_send(
    daemons: Callable[..., DaemonProcess], short_dir: Path
) -> None:
    srv = ServerProcess(short_dir / "srv").start()
    try:
        create_account(srv.data, "conv")
        a, b = daemons("a").start(), daemons("b").start()
        _pair(a.home, fields(server_cli(srv.data, "invite", "conv", "--no-qr").stdout)["pair"])
        _pair(b.home, fields(handoff(a.home, "invite").stdout)["pair"])
        assert handoff(b.home, "settings", "device_name", "desk").returncode == 0
        live = json.loads(handoff(a.home, "devices", "--json").stdout)
        assert live["source"] == "server"
        assert "server_error" not in live

        # Ctrl-C while a handoff waits for an offline device: it goes on in the daemon.
        b.stop()
        status, pub = a.curl("POST", "/v1/sessions", {"app_id": "org.x", "title": "T", "context": {},
                                                      "items": [{"type": "message", "name": "m", "text": "hi"}]})  # fmt: skip
        assert status == 201, pub
        proc = subprocess.Popen(
            [HANDOFF, "--home", str(a.home), "send", pub["id"], "--to", "desk"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            first = _read_line(proc, "err")  # progress goes to stderr, one line per state
            assert "ETA" in first
            proc.send_signal(signal.SIGINT)
            _out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
        assert proc.returncode == 130
        assert "goes on in the daemon" in err
        assert "handoff cancel" in err
        handoffs = json.loads(handoff(a.home, "handoffs", "--json").stdout)
        assert handoffs[0]["state"] not in ("cancelled", "failed")

        srv.stop()
        cached = handoff(a.home, "devices")
        assert cached.returncode == 0, cached.stderr
        assert "cached" in cached.stderr
        as_json = json.loads(handoff(a.home, "devices", "--json").stdout)
        assert as_json["source"] == "cache"
        assert as_json["server_error"]
    finally:
        srv.stop()


def test_progress_line_fits_and_the_rate_leaves_out_the_waits() -> None:
    h = {"state": "transferring", "bytes_done": 0, "bytes_total": 300 * 2**20, "path": "relay",
         "attempts": 1, "next_retry_at": None, "error": None}  # fmt: skip
    rate = Rate()
    rate.update(90.0, 0)  # connecting: nothing moves for 10 s
    rate.update(100.0, 0)
    assert rate.per_second() is None
    line = progress_line(h, rate.per_second(), 80)
    assert "ETA ?" in line
    assert len(line) <= 79
    # 100 MiB in 10 s, then 50 s waiting for the resume with nothing moving.
    rate.update(110.0, 100 * 2**20)
    rate.update(115.0, 100 * 2**20)
    rate.update(160.0, 100 * 2**20)
    assert rate.per_second() == 10 * 2**20
    h = {**h, "bytes_done": 100 * 2**20, "state": "retrying", "attempts": 3,
         "next_retry_at": time.time() + 30, "error": {"code": "no-path"}}  # fmt: skip
    for width in (40, 60, 80, 120):
        line = progress_line(h, rate.per_second(), width, prefix="demo: ")
        assert len(line) <= width - 1, (width, line)
    wide = progress_line(h, rate.per_second(), 120)
    assert "ETA 20s" in wide
    assert "[" in wide
    assert os.linesep not in wide
