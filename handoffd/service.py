"""``handoff service install|uninstall|status|render``: the daemon as a user service.

Linux: a systemd user unit in ``~/.config/systemd/user/handoffd.service``,
enabled with ``systemctl --user``. macOS: a LaunchAgent in
``~/Library/LaunchAgents/org.handoffd.handoffd.plist``, loaded with
``launchctl bootstrap gui/<uid>``. The files are rendered from the one copy of
each template, ``handoffd/units/`` (package data), with absolute paths to the
installed programs; a program the unit's own sandbox would hide
(``ProtectHome=``, ``PrivateTmp=``) is refused with what to do instead. Every
command run goes through an injectable ``Runner`` so tests check the plan
without a service manager.
"""

from __future__ import annotations

import os
import plistlib
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from handoffd.errors import HandoffError

UNIT = "handoffd.service"
SERVER_UNIT = "handoff-server.service"
LABEL = "org.handoffd.handoffd"
SERVER_LABEL = "org.handoffd.handoff-server"
PROGRAMS = ("handoffd", "handoff-server")
# The ExecStart= paths the checked-in units carry, so that they verify as they are.
UNIT_DEFAULTS = {
    "handoffd": "%h/.local/bin/handoffd",
    "handoff-server": "/usr/local/bin/handoff-server",
}
# What a unit's own sandbox hides from its processes.
HOME_DIRS = ("/home", "/root", "/run/user")
TMP_DIRS = ("/tmp", "/var/tmp")  # noqa: S108 - paths to refuse, not to use

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


def run_command(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run a service-manager command (30 s at most), capturing its output."""
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)


def program(name: str) -> str:
    """Absolute path of an installed console script (the one beside this Python first)."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside.absolute())
    found = shutil.which(name)
    if found is None:
        raise HandoffError(
            f"cannot find the {name} program; is handoffd installed?", code="program-missing"
        )
    return str(Path(found).absolute())


def template(name: str) -> str:
    """The text of a unit (``handoffd.service``) or plist template (``….plist.in``)."""
    return resources.files("handoffd").joinpath("units", name).read_text(encoding="utf-8")


def systemd_quote(path: str) -> str:
    """``path`` as the program word of ``ExecStart=`` (specifiers and variables escaped)."""
    escaped = path.replace("%", "%%").replace("$", "$$")
    if re.search(r"[\s\"'\\;]", escaped):
        escaped = '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return escaped


def render_unit(text: str, programs: Mapping[str, str]) -> str:
    """A systemd unit with the default program path of ``ExecStart=`` replaced."""
    out: list[str] = []
    replaced = False
    for line in text.splitlines(keepends=True):
        for name, default in UNIT_DEFAULTS.items():
            prefix = f"ExecStart={default}"
            if name in programs and (line.startswith(prefix + " ") or line.rstrip() == prefix):
                line = "ExecStart=" + systemd_quote(programs[name]) + line[len(prefix) :]
                replaced = True
        out.append(line)
    if not replaced:
        raise HandoffError("the unit template has no known ExecStart=", code="bad-template")
    return "".join(out)


def render_plist(text: str, substitutions: Mapping[str, str]) -> str:
    """A plist template with ``@NAME@`` placeholders in its strings filled (XML-escaped)."""

    def fill(value: Any) -> Any:
        if isinstance(value, str):
            for key, sub in substitutions.items():
                value = value.replace(key, sub)
            if "@" in value and re.search(r"@[A-Z_]+@", value):
                raise HandoffError(f"unfilled placeholder in {value!r}", code="bad-template")
            return value
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    data = fill(plistlib.loads(text.encode("utf-8")))
    return plistlib.dumps(data, sort_keys=False).decode("utf-8")


def render(name: str, *, home: Path, programs: Mapping[str, str] | None = None) -> str:
    """The file for template ``name`` (``handoffd.service``, ``org.handoffd.handoffd.plist``…).

    ``programs`` maps program names to absolute paths (default: the installed ones).
    """
    source = name + ".in" if name.endswith(".plist") else name
    text = template(source)
    if name.endswith(".plist"):
        wanted = [p for p in PROGRAMS if _placeholder(p) in text]
    else:
        wanted = [p for p in PROGRAMS if f"ExecStart={UNIT_DEFAULTS[p]}" in text]
    paths = dict(programs) if programs is not None else {p: program(p) for p in wanted}
    if name.endswith(".plist"):
        subs = {"@HOME@": str(home)}
        subs.update({_placeholder(p): path for p, path in paths.items()})
        return render_plist(text, subs)
    return render_unit(text, paths)


def _placeholder(name: str) -> str:
    return "@" + name.upper().replace("-", "_") + "@"


def _service_settings(text: str) -> dict[str, str]:
    """The last value of each ``Key=value`` line of a unit (comments skipped)."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith(("#", ";")):
            found[key.strip()] = value.strip()
    return found


def hidden_dirs(unit_text: str) -> tuple[str, ...]:
    """The directories a unit's own ``ProtectHome=``/``PrivateTmp=`` hide from its programs."""
    settings = _service_settings(unit_text)
    hidden: list[str] = []
    if settings.get("ProtectHome", "no").lower() in ("yes", "true", "on", "1", "tmpfs"):
        hidden.extend(HOME_DIRS)
    if settings.get("PrivateTmp", "no").lower() in ("yes", "true", "on", "1"):
        hidden.extend(TMP_DIRS)
    return tuple(hidden)


def _interpreter(path: str) -> str | None:
    """The ``#!`` interpreter of a script (a console script's Python), if it has one."""
    try:
        with open(path, "rb") as f:
            first = f.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode("utf-8", "replace").split()
    return words[0] if words else None


def hidden_program(path: str, unit_text: str) -> str | None:
    """The path (the program, its real path, or its interpreter) the unit would hide, if any."""
    hidden = hidden_dirs(unit_text)
    candidates = [path, os.path.realpath(path)]
    interpreter = _interpreter(path)
    if interpreter:
        candidates += [interpreter, os.path.realpath(interpreter)]
    for candidate in candidates:
        for d in hidden:
            if candidate == d or candidate.startswith(d + "/"):
                return candidate
    return None


def check_visible(name: str, programs: Mapping[str, str] | None = None) -> None:
    """HandoffError when the rendered unit ``name`` runs a program its own sandbox hides."""
    if not name.endswith(".service"):
        return
    text = template(name)
    for prog, default in UNIT_DEFAULTS.items():
        if f"ExecStart={default}" not in text:
            continue
        path = (programs or {}).get(prog) or program(prog)
        seen = hidden_program(path, text)
        if seen is None:
            continue
        where = "a system-wide place such as /usr/local or /opt" + (
            ""
            if prog == "handoffd"
            else " (e.g. `sudo python3 -m venv /opt/handoffd && "
            "sudo /opt/handoffd/bin/pip install handoffd`)"
        )
        raise HandoffError(
            f"{prog} is installed at {path}, but the unit's sandbox hides {seen} from the "
            f"service (ProtectHome=/PrivateTmp= in {name}); install it in {where} and run "
            f"this command from that installation",
            code="service-hidden-program",
        )


@dataclass(frozen=True, slots=True)
class Step:
    """One service-manager command; a failed ``optional`` step does not stop the rest."""

    argv: tuple[str, ...]
    optional: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    """Where the service file goes on this platform and how it is enabled."""

    path: Path
    template: str
    enable: tuple[Step, ...]
    restart: tuple[Step, ...]
    disable: tuple[Step, ...]
    status: tuple[str, ...]
    make_dirs: tuple[Path, ...]
    by_hand: str


def plan(home: Path, platform: str = sys.platform, uid: int | None = None) -> Plan:
    """The plan for ``platform`` with the user's home ``home``."""
    if platform == "darwin":
        path = home / "Library" / "LaunchAgents" / f"{LABEL}.plist"
        domain = f"gui/{os.getuid() if uid is None else uid}"
        bootout = Step(("launchctl", "bootout", f"{domain}/{LABEL}"), optional=True)
        return Plan(
            path=path,
            template=f"{LABEL}.plist",
            enable=(
                Step(("launchctl", "enable", f"{domain}/{LABEL}"), optional=True),
                bootout,  # bootstrap refuses a loaded job: unload the old one first
                Step(("launchctl", "bootstrap", domain, str(path))),
            ),
            restart=(),
            disable=(bootout,),
            status=("launchctl", "print", f"{domain}/{LABEL}"),
            make_dirs=(home / "Library" / "Logs" / "handoffd",),
            by_hand=f"launchctl bootstrap {domain} {path}",
        )
    path = home / ".config" / "systemd" / "user" / UNIT
    return Plan(
        path=path,
        template=UNIT,
        enable=(
            Step(("systemctl", "--user", "daemon-reload")),
            Step(("systemctl", "--user", "enable", "--now", UNIT)),
        ),
        restart=(Step(("systemctl", "--user", "try-restart", UNIT)),),
        disable=(Step(("systemctl", "--user", "disable", "--now", UNIT), optional=True),),
        status=("systemctl", "--user", "status", "--no-pager", "--lines=0", UNIT),
        make_dirs=(home / ".local" / "share" / "handoffd", home / ".config" / "handoffd"),
        by_hand=f"systemctl --user daemon-reload && systemctl --user enable --now {UNIT}",
    )


def _attempt(runner: Runner, step: Step) -> str | None:
    """Run one step; None on success, else why it failed (one line)."""
    try:
        done = runner(step.argv)
    except FileNotFoundError:
        return f"{step.argv[0]} is not installed"
    except subprocess.TimeoutExpired:
        return "it did not finish in time"
    if done.returncode == 0:
        return None
    detail = (done.stderr or done.stdout).strip().splitlines()
    return detail[-1] if detail else f"exit status {done.returncode}"


def install(
    *,
    enable: bool = True,
    dry_run: bool = False,
    runner: Runner = run_command,
    home: Path | None = None,
    platform: str = sys.platform,
) -> int:
    """Write the service file, create the daemon's directories, enable it; print each step.

    ``enable=False`` only writes; ``dry_run`` prints the file and the commands and
    changes nothing. 1 (with one line on stderr) when enabling failed: the file
    stays written and the line says how to enable it by hand.
    """
    user_home = home or Path.home()
    p = plan(user_home, platform)
    text = render(p.template, home=user_home)
    if dry_run:
        print(f"would write {p.path}:")
        print(text, end="" if text.endswith("\n") else "\n")
        for step in (*p.enable,):
            print("would run " + " ".join(step.argv))
        return 0
    old = p.path.read_text(encoding="utf-8") if p.path.is_file() else None
    for d in p.make_dirs:
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
    p.path.parent.mkdir(parents=True, exist_ok=True)
    p.path.write_text(text, encoding="utf-8")
    print(("unchanged " if old == text else "updated " if old else "wrote ") + str(p.path))
    if not enable:
        print("not enabled (--no-enable); enable it with: " + p.by_hand)
        return 0
    steps = p.enable if old in (None, text) else (*p.enable[:1], *p.restart, *p.enable[1:])
    for step in steps:
        why = _attempt(runner, step)
        if why is None:
            print("ran " + " ".join(step.argv))
        elif step.optional:
            print(f"skipped {' '.join(step.argv)} ({why})")
        else:
            print(
                f"handoff: wrote {p.path} but could not enable it: `{' '.join(step.argv)}` "
                f"failed ({why}); enable it by hand once a user service manager runs: "
                f"{p.by_hand} (or start `handoffd` yourself)",
                file=sys.stderr,
            )
            return 1
    return 0


def uninstall(
    *, runner: Runner = run_command, home: Path | None = None, platform: str = sys.platform
) -> int:
    """Disable the service and remove its file (the daemon's data stays)."""
    p = plan(home or Path.home(), platform)
    for step in p.disable:
        why = _attempt(runner, step)
        print(
            "ran " + " ".join(step.argv)
            if why is None
            else f"skipped {' '.join(step.argv)} ({why})"
        )
    if p.path.exists():
        p.path.unlink()
        print(f"removed {p.path}")
        if platform != "darwin":
            _attempt(runner, Step(("systemctl", "--user", "daemon-reload"), optional=True))
    else:
        print(f"{p.path} was not installed")
    return 0


def status(
    *, runner: Runner = run_command, home: Path | None = None, platform: str = sys.platform
) -> int:
    """Say whether the service file is installed and what the service manager reports.

    0 when installed; 1 with one line on stderr when not.
    """
    p = plan(home or Path.home(), platform)
    if not p.path.exists():
        print(
            f"handoff: the service is not installed ({p.path} does not exist); "
            "install it with `handoff service install`",
            file=sys.stderr,
        )
        return 1
    print(f"installed: {p.path}")
    try:
        done = runner(p.status)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        print(f"{p.status[0]} is not available: cannot ask the service manager")
        return 0
    for line in (done.stdout.strip() or done.stderr.strip()).splitlines():
        # The manager's output quotes the daemon's log lines: no control characters.
        print("".join(ch if ch.isprintable() else "?" for ch in line))
    return 0


def main(
    action: str,
    *,
    home: str | None = None,
    enable: bool = True,
    dry_run: bool = False,
    server: bool = False,
) -> int:
    """The ``handoff service`` command."""
    if home is not None:
        raise HandoffError(
            "the service runs the daemon with its default home; drop --home",
            code="service-home",
        )
    if action == "install":
        if sys.platform != "darwin":
            check_visible(UNIT)
        return install(enable=enable, dry_run=dry_run)
    if action == "uninstall":
        return uninstall()
    if action == "render":
        name = SERVER_UNIT if server else UNIT
        if sys.platform == "darwin":
            name = f"{SERVER_LABEL if server else LABEL}.plist"
        check_visible(name)
        print(render(name, home=Path.home()), end="")
        return 0
    return status()
