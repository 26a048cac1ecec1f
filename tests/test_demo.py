"""`handoff demo`, the product's main job, end to end as a user runs it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "handoffd.cli", "demo", *args],
        capture_output=True, text=True, timeout=240, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_demo_hands_a_session_over_and_cleans_up() -> None:
    done = _demo()
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    # Its own working directory, as it announced it (other demos may run on this machine).
    m = re.search(r"^demo: working in (/tmp/hdemo-\S+)$", out, re.MULTILINE)
    assert m is not None, out
    assert "code:" in out  # the invite, with its QR
    assert "notes: resumed 'Trip plans' from laptop" in out
    assert '"draft": "Remember to book the train"' in out
    assert "notes: confirmed" in out
    assert re.search(r"resumed via direct", out)
    assert "Done." in out
    assert not os.path.exists(m.group(1))  # nothing left behind: everything lived in it


def test_demo_keep_leaves_daemons_to_talk_to(tmp_path: Path) -> None:
    # The kept daemons inherit stdout: a file, not a pipe nobody would close.
    log = tmp_path / "demo.out"
    with log.open("w") as out:
        rc = subprocess.run(
            [sys.executable, "-m", "handoffd.cli", "demo", "--keep"],
            stdout=out, stderr=subprocess.STDOUT, timeout=240, check=False,
            stdin=subprocess.DEVNULL,
        ).returncode  # fmt: skip
    text = log.read_text()
    homes = re.findall(r"handoff --home (\S+) status", text)
    m = re.search(r"stop them with: kill ([\d ]+)", text)
    pids = [int(p) for p in m.group(1).split()] if m else []
    try:
        assert rc == 0, text
        assert len(homes) == 2
        status = subprocess.run(
            [sys.executable, "-m", "handoffd.cli", "--home", homes[1], "inbox", "--json"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        assert "Trip plans" in status.stdout
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + 20
        for pid in pids:
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        root = os.path.dirname(homes[0]) if homes else ""
        if root.startswith("/tmp/hdemo-"):
            subprocess.run(["rm", "-rf", root], check=False)
