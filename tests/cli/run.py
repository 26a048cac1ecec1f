"""Running the real ``handoff`` and ``handoff-server`` executables (the venv's console scripts)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
HANDOFF = str(BIN / "handoff")
HANDOFF_SERVER = str(BIN / "handoff-server")


def handoff(
    home: Path | None,
    *args: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    home_after: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``handoff --home HOME ARGS`` (``--home`` after the subcommand with ``home_after``)."""
    home_args = [] if home is None else ["--home", str(home)]
    argv = [HANDOFF, *args, *home_args] if home_after else [HANDOFF, *home_args, *args]
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        check=False,
        env=env,
    )


def server_cli(
    data: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``handoff-server ARGS --data DATA``."""
    return subprocess.run(
        [HANDOFF_SERVER, *args, "--data", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        check=False,
    )


def fields(out: str) -> dict[str, str]:
    """``key: value`` lines of an invite's output."""
    return {
        k.strip(): v.strip()
        for k, _, v in (line.partition(":") for line in out.splitlines())
        if k.strip() in ("pair", "code", "url", "expires")
    }


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single ``handoff: ...`` line of a failed command."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("handoff: "), done.stderr
    assert "Error" not in lines[0], done.stderr  # a cause in words, not an exception's name
    assert "Traceback" not in done.stderr
    return lines[0]


def eventually(check: Callable[[], Any], what: str, timeout: float = 45.0) -> Any:
    """Poll ``check`` until it returns something true; its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def no_xdg_env() -> dict[str, str]:
    """The environment without XDG_RUNTIME_DIR and HANDOFF_HOME."""
    env = dict(os.environ)
    env.pop("XDG_RUNTIME_DIR", None)
    env.pop("HANDOFF_HOME", None)
    return env
