"""``handoff service install|uninstall|status``: the daemon as a user service.

Linux: a systemd user unit in ``~/.config/systemd/user/handoffd.service``,
enabled with ``systemctl --user``. macOS: a LaunchAgent in
``~/Library/LaunchAgents/org.handoffd.handoffd.plist``, loaded with
``launchctl bootstrap gui/<uid>``. The files are rendered from the templates in
``systemd/`` and ``launchd/`` with absolute paths to the installed programs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from handoffd.errors import HandoffError

UNIT = "handoffd.service"
LABEL = "org.handoffd.handoffd"

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)


def program(name: str) -> str:
    """Absolute path of an installed console script (next to this Python first)."""
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
    """The text of a unit or plist template shipped with the package."""
    return resources.files("handoffd").joinpath("units", name).read_text(encoding="utf-8")


def render(name: str, *, home: Path) -> str:
    """A template with its placeholders filled."""
    text = template(name)
    subs = {"@HOME@": str(home)}
    if "@HANDOFFD@" in text:
        subs["@HANDOFFD@"] = program("handoffd")
    if "@HANDOFF_SERVER@" in text:
        subs["@HANDOFF_SERVER@"] = program("handoff-server")
    for key, value in subs.items():
        text = text.replace(key, value)
    return text


@dataclass(frozen=True, slots=True)
class Plan:
    """Where the service file goes on this platform and how it is enabled."""

    path: Path
    template: str
    enable: tuple[tuple[str, ...], ...]
    disable: tuple[tuple[str, ...], ...]
    status: tuple[str, ...]
    make_dirs: tuple[Path, ...]


def plan(home: Path, platform: str = sys.platform) -> Plan:
    """The plan for ``platform`` with the user's home ``home``."""
    if platform == "darwin":
        path = home / "Library" / "LaunchAgents" / f"{LABEL}.plist"
        domain = f"gui/{os.getuid()}"
        return Plan(
            path=path,
            template=f"{LABEL}.plist",
            enable=(("launchctl", "bootstrap", domain, str(path)),),
            disable=(("launchctl", "bootout", f"{domain}/{LABEL}"),),
            status=("launchctl", "print", f"{domain}/{LABEL}"),
            make_dirs=(home / "Library" / "Logs" / "handoffd",),
        )
    path = home / ".config" / "systemd" / "user" / UNIT
    return Plan(
        path=path,
        template=UNIT,
        enable=(
            ("systemctl", "--user", "daemon-reload"),
            ("systemctl", "--user", "enable", "--now", UNIT),
        ),
        disable=(("systemctl", "--user", "disable", "--now", UNIT),),
        status=("systemctl", "--user", "status", "--no-pager", UNIT),
        make_dirs=(home / ".local" / "share" / "handoffd", home / ".config" / "handoffd"),
    )


def install(*, dry_run: bool = False, runner: Runner = _run, home: Path | None = None) -> int:
    """Write the service file, create its directories, enable it; print what was done."""
    user_home = home or Path.home()
    p = plan(user_home)
    text = render(p.template, home=user_home)
    p.path.parent.mkdir(parents=True, exist_ok=True)
    for d in p.make_dirs:
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
    p.path.write_text(text, encoding="utf-8")
    print(f"wrote {p.path}")
    if dry_run:
        print("not enabled (--dry-run); enable with: " + "; ".join(" ".join(c) for c in p.enable))
        return 0
    for argv in p.enable:
        done = runner(argv)
        if done.returncode != 0:
            print(
                f"handoff: could not run `{' '.join(argv)}`: {done.stderr.strip() or done.returncode}; "
                "the file is written: enable it by hand when a user service manager runs",
                file=sys.stderr,
            )
            return 1
        print(f"ran {' '.join(argv)}")
    return 0


def uninstall(*, runner: Runner = _run, home: Path | None = None) -> int:
    """Disable the service and remove its file."""
    p = plan(home or Path.home())
    for argv in p.disable:
        done = runner(argv)
        print(
            f"ran {' '.join(argv)}" if done.returncode == 0 else f"skipped: {' '.join(argv)} failed"
        )
    if p.path.exists():
        p.path.unlink()
        print(f"removed {p.path}")
    else:
        print(f"{p.path} was not installed")
    return 0


def status(*, runner: Runner = _run, home: Path | None = None) -> int:
    """Say whether the service file is installed and what the service manager reports."""
    p = plan(home or Path.home())
    print(f"{p.path}: {'installed' if p.path.exists() else 'not installed'}")
    done = runner(p.status)
    print(done.stdout.strip() or done.stderr.strip())
    return 0 if p.path.exists() else 1


def main(action: str, *, home: str | None = None, dry_run: bool = False) -> int:
    """The ``handoff service`` command."""
    if home is not None:
        raise HandoffError(
            "the service runs with the default home; drop --home (or set it in the unit by hand)",
            code="service-home",
        )
    try:
        if action == "install":
            return install(dry_run=dry_run)
        if action == "uninstall":
            return uninstall()
        return status()
    except FileNotFoundError as exc:
        raise HandoffError(
            f"cannot run {exc.filename}: not installed here", code="service-manager-missing"
        ) from exc
