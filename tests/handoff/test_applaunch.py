"""App launches through ``systemd-run --user`` (outside the daemon's sandbox) or spawned plainly."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from handoffd.errors import ConfigError
from handoffd.handoff.applaunch import ENV, SPAWN, SYSTEMD_RUN, AppStarter
from handoffd.handoff.launcher import Launcher, LaunchRequest

# A stand-in for systemd-run: records its argv, applies --setenv, runs what follows "--" and
# exits with its status (as `systemd-run --wait` does), so the launcher sees one process.
STUB = """#!{python}
import json, os, subprocess, sys
args = sys.argv[1:]
with open({log!r}, "a") as f:
    f.write(json.dumps(args) + "\\n")
cut = args.index("--")
env = dict(os.environ)
for a in args[:cut]:
    if a.startswith("--setenv="):
        k, _, v = a[len("--setenv="):].partition("=")
        env[k] = v
sys.exit(subprocess.run(args[cut + 1:], env=env).returncode)
"""

APP = """
import os, pathlib, sys, time
out = pathlib.Path(sys.argv[1])
out.write_text(os.environ["HANDOFF_ID"] + " " + os.environ.get("HANDOFF_HOME", "-"))
release = out.with_suffix(".release")
for _ in range(1200):
    if release.exists():
        break
    time.sleep(0.05)
"""


def test_mode_from_the_environment() -> None:
    with_run = {"PATH": os.path.dirname(shutil.which("systemd-run") or "/usr/bin/systemd-run")}
    assert AppStarter.from_env({}).mode == SPAWN
    # Under systemd but not asked: a plain child (a test run inside a service stays plain).
    assert AppStarter.from_env({**with_run, "INVOCATION_ID": "abc"}).mode == SPAWN
    auto = {**with_run, ENV: "auto", "INVOCATION_ID": "abc"}
    assert AppStarter.from_env(auto).mode == SYSTEMD_RUN
    assert AppStarter.from_env({**auto, "PATH": "/nonexistent"}).mode == SPAWN
    assert AppStarter.from_env({**with_run, ENV: "auto"}).mode == SPAWN
    assert AppStarter.from_env({**with_run, ENV: "spawn", "INVOCATION_ID": "a"}).mode == SPAWN
    assert AppStarter.from_env({ENV: "systemd-run"}).mode == SYSTEMD_RUN
    with pytest.raises(ConfigError, match="auto, spawn or systemd-run"):
        AppStarter.from_env({ENV: "sudo"})


def test_systemd_run_command_passes_only_what_the_launch_adds() -> None:
    base = {"PATH": "/usr/bin", "HOME": "/home/a", "XDG_RUNTIME_DIR": "/run/user/1000"}
    starter = AppStarter(mode=SYSTEMD_RUN, program="/usr/bin/systemd-run", base_env=base)
    env = {**base, "HANDOFF_ID": "h1", "HANDOFF_HOME": ""}
    argv, run_env = starter.command("org.example.notes", "h1/x", ("/usr/bin/notes", "-r"), env)
    assert argv[:6] == (
        "/usr/bin/systemd-run", "--user", "--quiet", "--collect", "--wait", "--service-type=exec"
    )  # fmt: skip
    assert argv[-3:] == ("--", "/usr/bin/notes", "-r")
    unit = next(a for a in argv if a.startswith("--unit="))
    assert unit.startswith("--unit=handoff-app-org.example.notes-h1_x-")
    assert [a for a in argv if a.startswith("--setenv=")] == [
        "--setenv=HANDOFF_HOME=",
        "--setenv=HANDOFF_ID=h1",
    ]
    assert run_env == base  # systemd-run finds the user manager through XDG_RUNTIME_DIR
    plain = AppStarter(mode=SPAWN).command("a", "h", ("/bin/app",), env)
    assert plain == (("/bin/app",), env)


def _launcher(starter: AppStarter, failed: list[str]) -> tuple[Launcher, set[asyncio.Task[None]]]:
    tasks: set[asyncio.Task[None]] = set()

    def spawn(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    async def still_wanted(req: LaunchRequest) -> bool:
        return False

    launcher = Launcher(
        spawn,
        still_wanted=still_wanted,
        on_failed=lambda req: failed.append(req.handoff_id),
        interval=0.0,
        starter=starter,
    )
    return launcher, tasks


@pytest.mark.asyncio
async def test_launch_goes_through_systemd_run_when_asked(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "systemd-run.log"
    stub = bin_dir / "systemd-run"
    stub.write_text(STUB.format(python=sys.executable, log=str(log)))
    stub.chmod(0o755)
    environ = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin')}"}
    environ.pop("HANDOFF_ID", None)
    starter = AppStarter.from_env({**environ, ENV: "systemd-run"})
    assert starter.program == str(stub)
    failed: list[str] = []
    launcher, tasks = _launcher(starter, failed)
    out = tmp_path / "app.out"
    app = (sys.executable, "-c", APP, str(out))
    env = {**environ, "HANDOFF_ID": "h-1", "HANDOFF_HOME": "/data/x"}
    assert await launcher.launch("org.example.notes", "h-1", app, env) == "launched"
    proc = launcher.live["org.example.notes"]
    for _ in range(1200):  # the app writes its file first thing (60 s at most)
        if out.exists() and out.read_text():
            break
        await asyncio.sleep(0.05)
    assert out.read_text() == "h-1 /data/x"  # the launch's variables reached the app
    (argv,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert argv[:5] == ["--user", "--quiet", "--collect", "--wait", "--service-type=exec"]
    assert argv[argv.index("--") + 1 :] == list(app)
    assert "--setenv=HANDOFF_ID=h-1" in argv
    assert not any(a.startswith("--setenv=PATH=") for a in argv)  # not the daemon's env
    # systemd-run --wait lives as long as the app: a second session coalesces meanwhile.
    assert await launcher.launch("org.example.notes", "h-2", app, env) == "coalesced"
    out.with_suffix(".release").touch()
    async with asyncio.timeout(60):
        assert await proc.wait() == 0
        await asyncio.gather(*tasks)  # the reaper
    assert "org.example.notes" not in launcher.live
    assert failed == []


@pytest.mark.asyncio
async def test_plain_spawn_runs_the_app_itself(tmp_path: Path) -> None:
    failed: list[str] = []
    launcher, tasks = _launcher(AppStarter.from_env({"PATH": "/nonexistent"}), failed)
    out = tmp_path / "app.out"
    out.with_suffix(".release").touch()
    env = {**os.environ, "HANDOFF_ID": "h-9", "HANDOFF_HOME": ""}
    app = (sys.executable, "-c", APP, str(out))
    assert await launcher.launch("notes", "h-9", app, env) == "launched"
    proc = launcher.live["notes"]
    async with asyncio.timeout(60):
        assert await proc.wait() == 0
        await asyncio.gather(*tasks)  # the reaper
    assert out.read_text() == "h-9 "
    assert failed == []


def test_the_real_systemd_run_accepts_the_command(tmp_path: Path) -> None:
    """Debian's systemd-run parses our argv; with no user manager here it fails to connect
    (not on an option), which is also what a launch shows when the session has no manager."""
    program = shutil.which("systemd-run")
    assert program, "needs systemd-run (apt-get install systemd)"
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    base = {"PATH": os.environ.get("PATH", "/usr/bin"), "XDG_RUNTIME_DIR": str(runtime)}
    starter = AppStarter(mode=SYSTEMD_RUN, program=program, base_env=base)
    argv, env = starter.command(
        "org.example.notes", "h-1", ("/bin/true",), {**base, "HANDOFF_ID": "h-1"}
    )
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert "bus" in done.stderr.lower(), done.stderr
    for complaint in ("unrecognized option", "invalid", "unknown", "usage"):
        assert complaint not in done.stderr.lower(), done.stderr
