"""Service files: systemd units verify, plists parse, install writes absolute paths."""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from handoffd import service

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def _verify(unit: Path, *, user: bool, runtime: Path) -> subprocess.CompletedProcess[str]:
    argv = ["systemd-analyze", *(["--user"] if user else []), "verify", str(unit)]
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False)


@pytest.mark.parametrize(
    ("name", "user"), [("handoffd.service", True), ("handoff-server.service", False)]
)
def test_systemd_units_verify(name: str, user: bool, tmp_path: Path) -> None:
    if SYSTEMD_ANALYZE is None:
        pytest.skip("systemd-analyze is not installed (CI installs the systemd package)")
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    unit = tmp_path / name
    unit.write_text(service.render(name, home=tmp_path))
    done = _verify(unit, user=user, runtime=runtime)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == ""  # verify reports bad settings as warnings only
    # and a broken unit is noticed, so the check above could fail
    unit.write_text(unit.read_text().replace("Restart=on-failure", "Restart=sometimes"))
    assert "restart specifier" in _verify(unit, user=user, runtime=runtime).stderr


def test_user_unit_has_the_required_settings(tmp_path: Path) -> None:
    text = service.render("handoffd.service", home=tmp_path)
    for line in (
        "Type=notify", "NotifyAccess=main", "Restart=on-failure", "WatchdogSec=30",
        "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "SystemCallArchitectures=native", "LockPersonality=yes",
    ):  # fmt: skip
        assert line in text.splitlines(), line
    server = service.render("handoff-server.service", home=tmp_path)
    for line in ("DynamicUser=yes", "StateDirectory=handoff-server", "ProtectSystem=strict"):
        assert line in server.splitlines(), line


@pytest.mark.parametrize(
    "name", ["org.handoffd.handoffd.plist", "org.handoffd.handoff-server.plist"]
)
def test_plists_parse_with_required_keys(name: str, tmp_path: Path) -> None:
    data = plistlib.loads(service.render(name, home=tmp_path).encode())
    for key in ("Label", "ProgramArguments", "RunAtLoad", "KeepAlive"):
        assert key in data
    assert data["RunAtLoad"] is True
    assert data["KeepAlive"] is True
    assert Path(data["ProgramArguments"][0]).is_absolute()
    assert os.access(data["ProgramArguments"][0], os.X_OK)
    if name == "org.handoffd.handoffd.plist":
        assert data["StandardErrorPath"] == f"{tmp_path}/Library/Logs/handoffd/handoffd.log"


class Recorder:
    def __init__(self, rc: int = 0) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.rc = rc

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(tuple(argv))
        return subprocess.CompletedProcess(
            list(argv), self.rc, "", "no user manager" if self.rc else ""
        )


def test_install_writes_absolute_paths_and_enables(tmp_path: Path) -> None:
    rec = Recorder()
    assert service.install(runner=rec, home=tmp_path) == 0
    unit = tmp_path / ".config/systemd/user/handoffd.service"
    exec_start = next(
        line for line in unit.read_text().splitlines() if line.startswith("ExecStart=")
    )
    program = exec_start.split("=", 1)[1]
    assert Path(program).is_absolute()
    assert os.access(program, os.X_OK)
    assert (tmp_path / ".local/share/handoffd").is_dir()
    assert rec.calls == [
        ("systemctl", "--user", "daemon-reload"),
        ("systemctl", "--user", "enable", "--now", "handoffd.service"),
    ]
    assert service.uninstall(runner=rec, home=tmp_path) == 0
    assert not unit.exists()


def test_install_says_when_enabling_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert service.install(runner=Recorder(rc=1), home=tmp_path) == 1
    assert "enable it by hand" in capsys.readouterr().err
    assert (tmp_path / ".config/systemd/user/handoffd.service").exists()


def test_macos_plan(tmp_path: Path) -> None:
    p = service.plan(tmp_path, platform="darwin")
    assert p.path == tmp_path / "Library/LaunchAgents/org.handoffd.handoffd.plist"
    assert p.enable[0][:2] == ("launchctl", "bootstrap")
