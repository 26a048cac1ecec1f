"""Service files: systemd units verify, plists parse, install writes absolute paths."""

from __future__ import annotations

import os
import plistlib
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from handoffd import service
from handoffd.errors import HandoffError
from tests.server.helpers import cli_invite, create_account
from tests.support.processes import READY_PREFIX, DaemonProcess

ROOT = Path(__file__).resolve().parents[2]
USER_UNIT = "handoffd.service"
SERVER_UNIT = "handoff-server.service"


def _verify(unit: Path, *, user: bool, runtime: Path) -> subprocess.CompletedProcess[str]:
    # As root, `--user` verifies against the user manager's unit paths and
    # specifiers (%h from $HOME, %t from $XDG_RUNTIME_DIR, which must exist).
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing: install Debian's systemd"
    argv = ["systemd-analyze", *(["--user"] if user else []), "verify", str(unit)]
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "HOME": str(runtime.parent)}
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False)


@pytest.fixture
def runtime(tmp_path: Path) -> Path:
    path = tmp_path / "run"
    path.mkdir(mode=0o700)
    return path


@pytest.mark.parametrize(("name", "user"), [(USER_UNIT, True), (SERVER_UNIT, False)])
def test_rendered_units_verify_cleanly(
    name: str, user: bool, tmp_path: Path, runtime: Path
) -> None:
    unit = tmp_path / name
    unit.write_text(service.render(name, home=tmp_path))
    done = _verify(unit, user=user, runtime=runtime)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == ""  # verify reports bad settings as warnings only
    # and a broken unit is noticed, so the check above could fail
    unit.write_text(unit.read_text().replace("Restart=on-failure", "Restart=sometimes"))
    assert "restart specifier" in _verify(unit, user=user, runtime=runtime).stderr


def test_verify_checks_the_program_so_the_checked_in_default_needs_rendering(
    tmp_path: Path, runtime: Path
) -> None:
    unit = tmp_path / USER_UNIT
    unit.write_text(service.template(USER_UNIT))
    done = _verify(unit, user=True, runtime=runtime)  # %h is tmp_path: nothing installed there
    assert done.returncode != 0
    assert f"{tmp_path}/.local/bin/handoffd is not executable" in done.stderr
    (tmp_path / ".local/bin").mkdir(parents=True)
    (tmp_path / ".local/bin/handoffd").symlink_to(service.program("handoffd"))
    done = _verify(unit, user=True, runtime=runtime)
    assert done.returncode == 0, done.stderr


def test_odd_program_paths_are_quoted_and_verify(tmp_path: Path, runtime: Path) -> None:
    odd = tmp_path / "my tools" / "100%"
    odd.mkdir(parents=True)
    (odd / "handoffd").symlink_to(service.program("handoffd"))
    text = service.render(USER_UNIT, home=tmp_path, programs={"handoffd": str(odd / "handoffd")})
    assert f'ExecStart="{tmp_path}/my tools/100%%/handoffd"' in text.splitlines()
    unit = tmp_path / USER_UNIT
    unit.write_text(text)
    done = _verify(unit, user=True, runtime=runtime)
    assert done.returncode == 0, done.stderr


def test_one_copy_of_each_unit() -> None:
    units = ROOT / "handoffd" / "units"
    names = sorted(p.name for p in units.iterdir())
    assert names == sorted(
        [USER_UNIT, SERVER_UNIT, f"{service.LABEL}.plist.in", f"{service.SERVER_LABEL}.plist.in"]
    )
    assert not any(p.is_symlink() for p in units.iterdir())
    assert not (ROOT / "systemd").exists()
    assert not (ROOT / "launchd").exists()


@pytest.mark.parametrize("name", [USER_UNIT, SERVER_UNIT])
def test_rendering_changes_only_the_program(name: str) -> None:
    source = service.template(name)
    rendered = service.render(name, home=ROOT)
    changed = set(rendered.splitlines()) ^ set(source.splitlines())
    assert len(changed) == 2  # the ExecStart= line, and nothing else
    assert all(line.startswith("ExecStart=") for line in changed)


def _exposure(unit: Path, *, user: bool, runtime: Path) -> float:
    argv = ["systemd-analyze", *(["--user"] if user else []), "security", "--offline=true"]
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "HOME": str(runtime.parent)}
    done = subprocess.run(
        [*argv, str(unit)], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert m is not None, done.stdout + done.stderr
    return float(m.group(1))


@pytest.mark.parametrize(
    ("name", "user", "limit"), [(USER_UNIT, True, 4.0), (SERVER_UNIT, False, 2.0)]
)
def test_exposure_scores(
    name: str, user: bool, limit: float, tmp_path: Path, runtime: Path
) -> None:
    unit = tmp_path / name
    unit.write_text(service.render(name, home=tmp_path))
    score = _exposure(unit, user=user, runtime=runtime)
    assert score <= limit, score
    # The score reads the file: without the sandbox the same unit rates far worse.
    bare = "\n".join(
        line for line in unit.read_text().splitlines()
        if line.startswith(("[", "Description=", "Type=", "ExecStart=", "WantedBy="))
    )  # fmt: skip
    unit.write_text(bare + "\n")
    assert _exposure(unit, user=user, runtime=runtime) > 8.0


def test_a_program_the_sandbox_hides_is_refused(tmp_path: Path) -> None:
    server_unit = service.template(SERVER_UNIT)
    user_unit = service.template(USER_UNIT)
    assert service.hidden_program("/home/alice/venv/bin/handoff-server", server_unit) == (
        "/home/alice/venv/bin/handoff-server"
    )
    assert service.hidden_program("/usr/local/bin/handoff-server", server_unit) is None
    # The user unit reads home (ProtectHome=read-only) but has its own /tmp.
    assert service.hidden_program("/home/alice/.local/bin/handoffd", user_unit) is None
    assert service.hidden_program("/tmp/venv/bin/handoffd", user_unit) == "/tmp/venv/bin/handoffd"
    # A script in a visible place whose interpreter is not (a venv made under /root).
    script = tmp_path / "handoff-server"
    script.write_text("#!/root/venv/bin/python3\nimport sys\n")
    script.chmod(0o755)
    assert service.hidden_program(str(script), server_unit) in (
        str(script),
        "/root/venv/bin/python3",
    )
    with pytest.raises(HandoffError, match="sandbox hides /tmp/x/handoff-server"):
        service.check_visible(SERVER_UNIT, {"handoff-server": "/tmp/x/handoff-server"})
    service.check_visible(SERVER_UNIT, {"handoff-server": "/usr/local/bin/handoff-server"})


def _lines(text: str) -> set[str]:
    return set(text.splitlines())


def test_user_unit_settings(tmp_path: Path) -> None:
    lines = _lines(service.render(USER_UNIT, home=tmp_path))
    for line in (
        "Type=notify", "NotifyAccess=main", "Restart=on-failure", "WatchdogSec=30",
        "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
        "ReadWritePaths=-%h/.local/share/handoffd -%h/.config/handoffd -%h/Downloads",
        "RuntimeDirectory=handoffd", "RuntimeDirectoryMode=0700",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "SystemCallArchitectures=native", "LockPersonality=yes", "KillMode=mixed",
        "WantedBy=default.target", "LimitNOFILE=8192", "PrivateUsers=yes",
        "CapabilityBoundingSet=", "ProtectHome=read-only", "PrivateDevices=yes",
        "SystemCallFilter=~@privileged @resources", "Environment=HANDOFF_APP_LAUNCH=systemd-run",
    ):  # fmt: skip
        assert line in lines, line
    exec_start = next(x for x in lines if x.startswith("ExecStart="))
    assert exec_start == "ExecStart=" + service.program("handoffd")
    # aiortc's DTLS breaks under it (test_daemon_stack_needs_write_execute_memory)
    assert not any(x.startswith("MemoryDenyWriteExecute") for x in lines)


def test_server_unit_settings(tmp_path: Path) -> None:
    lines = _lines(service.render(SERVER_UNIT, home=tmp_path))
    for line in (
        "DynamicUser=yes", "StateDirectory=handoff-server", "ProtectSystem=strict",
        "ProtectHome=yes", "PrivateTmp=yes", "PrivateDevices=yes", "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "SystemCallArchitectures=native",
        "LockPersonality=yes", "MemoryDenyWriteExecute=yes", "CapabilityBoundingSet=",
        "LimitNOFILE=65536",
    ):  # fmt: skip
        assert line in lines, line
    exec_start = next(x for x in lines if x.startswith("ExecStart="))
    program, *args = exec_start.removeprefix("ExecStart=").split()
    assert program == service.program("handoff-server")
    assert args[:2] == ["serve", "--listen"]
    assert "--data" not in args  # $STATE_DIRECTORY


@pytest.mark.parametrize("label", [service.LABEL, service.SERVER_LABEL])
def test_plists_parse_with_required_keys(label: str, tmp_path: Path) -> None:
    data = plistlib.loads(service.render(f"{label}.plist", home=tmp_path).encode())
    assert data["Label"] == label
    assert data["RunAtLoad"] is True
    assert data["KeepAlive"] in (True, {"SuccessfulExit": False})
    program = data["ProgramArguments"][0]
    assert Path(program).is_absolute()
    assert os.access(program, os.X_OK)
    assert Path(data["StandardErrorPath"]).is_absolute()
    assert data["SoftResourceLimits"]["NumberOfFiles"] >= 8192
    if label == service.LABEL:
        assert data["ProgramArguments"] == [service.program("handoffd")]
        assert data["StandardErrorPath"] == f"{tmp_path}/Library/Logs/handoffd/handoffd.log"
        assert data["AbandonProcessGroup"] is True
    else:
        assert data["ProgramArguments"][1] == "serve"
        assert data["UserName"] == "_handoff"


def test_plist_values_are_xml_escaped(tmp_path: Path) -> None:
    home = tmp_path / "a&b <c>"
    text = service.render(f"{service.LABEL}.plist", home=home, programs={"handoffd": "/x/y"})
    assert plistlib.loads(text.encode())["StandardOutPath"].startswith(str(home))


class Recorder:
    """A command runner that records argv and answers with ``rc`` (and ``out``)."""

    def __init__(self, rc: int = 0, out: str = "") -> None:
        self.calls: list[tuple[str, ...]] = []
        self.rc = rc
        self.out = out

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(tuple(argv))
        err = "Failed to connect to bus: No medium found" if self.rc else ""
        return subprocess.CompletedProcess(list(argv), self.rc, self.out, err)


def _exec_start(unit: Path) -> str:
    line = next(x for x in unit.read_text().splitlines() if x.startswith("ExecStart="))
    return line.split("=", 1)[1]


def test_install_writes_absolute_paths_and_enables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rec = Recorder()
    assert service.install(runner=rec, home=tmp_path, platform="linux") == 0
    unit = tmp_path / ".config/systemd/user/handoffd.service"
    program = _exec_start(unit)
    assert Path(program).is_absolute()
    assert os.access(program, os.X_OK)
    for d in (".local/share/handoffd", ".config/handoffd"):
        assert (tmp_path / d).is_dir()
        assert (tmp_path / d).stat().st_mode & 0o077 == 0
    assert rec.calls == [
        ("systemctl", "--user", "daemon-reload"),
        ("systemctl", "--user", "enable", "--now", "handoffd.service"),
    ]
    out = capsys.readouterr().out
    assert f"wrote {unit}" in out
    assert "ran systemctl --user enable --now handoffd.service" in out

    # Again, unchanged: no restart. Changed: a running daemon is restarted on the new file.
    rec.calls.clear()
    assert service.install(runner=rec, home=tmp_path, platform="linux") == 0
    assert ("systemctl", "--user", "try-restart", "handoffd.service") not in rec.calls
    unit.write_text(unit.read_text().replace("RestartSec=2", "RestartSec=5"))
    rec.calls.clear()
    assert service.install(runner=rec, home=tmp_path, platform="linux") == 0
    assert rec.calls[1] == ("systemctl", "--user", "try-restart", "handoffd.service")
    assert "RestartSec=2" in unit.read_text()

    rec.calls.clear()
    assert service.uninstall(runner=rec, home=tmp_path, platform="linux") == 0
    assert rec.calls[0] == ("systemctl", "--user", "disable", "--now", "handoffd.service")
    assert not unit.exists()
    assert (tmp_path / ".local/share/handoffd").is_dir()  # the daemon's data stays


def test_install_says_plainly_when_enabling_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert service.install(runner=Recorder(rc=1), home=tmp_path, platform="linux") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "could not enable it" in err[0]
    assert "No medium found" in err[0]
    assert "systemctl --user enable --now handoffd.service" in err[0]
    assert (tmp_path / ".config/systemd/user/handoffd.service").exists()


def test_install_without_systemctl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def missing(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError(2, "No such file or directory", argv[0])

    assert service.install(runner=missing, home=tmp_path, platform="linux") == 1
    assert "systemctl is not installed" in capsys.readouterr().err


def test_macos_install_plan(tmp_path: Path) -> None:
    rec = Recorder()
    assert service.install(runner=rec, home=tmp_path, platform="darwin") == 0
    path = tmp_path / "Library/LaunchAgents/org.handoffd.handoffd.plist"
    data = plistlib.loads(path.read_bytes())
    assert os.access(data["ProgramArguments"][0], os.X_OK)
    assert (tmp_path / "Library/Logs/handoffd").is_dir()
    domain = f"gui/{os.getuid()}"
    assert rec.calls[-1] == ("launchctl", "bootstrap", domain, str(path))
    rec.calls.clear()
    assert service.uninstall(runner=rec, home=tmp_path, platform="darwin") == 0
    assert rec.calls == [("launchctl", "bootout", f"{domain}/org.handoffd.handoffd")]
    assert not path.exists()


def test_status_reports_and_sanitizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert service.status(runner=Recorder(), home=tmp_path, platform="linux") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "not installed" in err[0]
    assert service.install(enable=False, home=tmp_path, platform="linux") == 0
    rec = Recorder(out="Active: active (running)\nlog: name=\x1b]0;pwned\x07\n")
    assert service.status(runner=rec, home=tmp_path, platform="linux") == 0
    out = capsys.readouterr().out
    assert "installed: " in out
    assert "Active: active (running)" in out
    assert "\x1b" not in out
    assert "\x07" not in out


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HANDOFF_HOME"}
    env["HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "handoffd.cli", "service", *args],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip


def test_cli_install_no_enable_and_dry_run(tmp_path: Path) -> None:
    unit = tmp_path / ".config/systemd/user/handoffd.service"
    dry = _cli(tmp_path, "install", "--dry-run")
    if service.hidden_program(service.program("handoffd"), service.template(USER_UNIT)):
        # This checkout lives where the unit's PrivateTmp would hide it: refused, said why.
        assert dry.returncode == 1
        assert "the unit's sandbox hides" in dry.stderr
        assert not unit.exists()
        return
    assert dry.returncode == 0, dry.stderr
    assert "ExecStart=" + service.program("handoffd") in dry.stdout
    assert "would run systemctl --user enable --now handoffd.service" in dry.stdout
    assert not unit.exists()  # a dry run changes nothing

    done = _cli(tmp_path, "install", "--no-enable")
    assert done.returncode == 0, done.stderr
    assert os.access(_exec_start(unit), os.X_OK)
    assert "systemctl --user enable --now handoffd.service" in done.stdout
    status = _cli(tmp_path, "status")
    assert f"installed: {unit}" in status.stdout

    rendered = _cli(tmp_path, "render", "--server")
    server = service.program("handoff-server")
    if service.hidden_program(server, service.template(SERVER_UNIT)) is None:
        assert rendered.returncode == 0, rendered.stderr
        assert "ExecStart=" + server + " serve" in rendered.stdout
    else:  # this checkout lives where the server's sandbox would hide it
        assert rendered.returncode == 1
        assert "the unit's sandbox hides" in rendered.stderr

    with_home = subprocess.run(
        [sys.executable, "-m", "handoffd.cli", "--home", str(tmp_path), "service", "install"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert with_home.returncode == 1
    assert "drop --home" in with_home.stderr


def test_each_action_has_its_own_options(tmp_path: Path) -> None:
    helps = {a: _cli(tmp_path, a, "--help") for a in ("install", "uninstall", "status", "render")}
    for action, done in helps.items():
        assert done.returncode == 0, done.stderr
        assert f"handoff service {action}" in done.stdout
    assert "--dry-run" in helps["install"].stdout
    assert "--no-enable" in helps["install"].stdout
    assert "--server" not in helps["install"].stdout
    assert "--server" in helps["render"].stdout
    assert "--dry-run" not in helps["render"].stdout
    for action in ("uninstall", "status"):
        assert "--" not in helps[action].stdout.replace("--help", "")
    wrong = _cli(tmp_path, "status", "--dry-run")
    assert wrong.returncode == 2
    assert "unrecognized arguments: --dry-run" in wrong.stderr


# PR_SET_MDWE (Linux >= 6.3) is the kernel's own MemoryDenyWriteExecute: mappings
# cannot be writable and executable, nor become executable. It is inherited
# across fork and exec, so the programs below run under it.
MDWE_EXEC = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(f"PR_SET_MDWE failed: {os.strerror(ctypes.get_errno())}")
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def test_daemon_stack_needs_write_execute_memory() -> None:
    # Why the user unit has no MemoryDenyWriteExecute: aiortc's DTLS sets a
    # pyOpenSSL verify callback, an ffi.callback() that needs W+X memory.
    probe = (
        "from OpenSSL import SSL\n"
        "SSL.Context(SSL.DTLS_METHOD).set_verify(SSL.VERIFY_PEER, lambda *a: True)\n"
    )
    plain = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, timeout=60, check=False
    )
    assert plain.returncode == 0, plain.stderr
    done = subprocess.run(
        [sys.executable, "-c", MDWE_EXEC, "-c", probe],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "write+execute memory" in done.stderr


def test_server_serves_and_pairs_under_memory_deny_write_execute(
    daemons: Callable[..., DaemonProcess], short_dir: Path
) -> None:
    data = short_dir / "srv"
    log = short_dir / "srv.log"
    argv = [sys.executable, "-c", MDWE_EXEC, "-m", "handoffd.server.cli", "serve",
            "--data", str(data), "--listen", "127.0.0.1:0"]  # fmt: skip
    with log.open("w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(READY_PREFIX), log.read_text()
        create_account(data, "mdwe")  # Argon2, SQLite: outside the MDWE process, same store
        url, _code = cli_invite(data, "mdwe")
        d = daemons("a").start()
        # Joining exercises the server's TLS, CSR checks, certificate signing, signed requests.
        done = subprocess.run(
            [sys.executable, "-m", "handoffd.cli", "--home", str(d.home), "pair", "-"],
            input=url + "\n", capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr + log.read_text()
        assert proc.poll() is None, log.read_text()
        assert "write+execute" not in log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
