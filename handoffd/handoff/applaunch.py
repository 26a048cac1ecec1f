"""How an app is started to resume a session: a plain child process, or a transient unit of the
user's service manager (``systemd-run --user``) so that it runs outside the daemon's sandbox.

Under the systemd user unit the daemon runs with a read-only file system, a private ``/tmp``,
a syscall filter and no capabilities; a child process would inherit all of it (a resumed
editor could not save to ``~/Documents``). ``systemd-run --user --wait`` asks the user
manager to start the app as its own unit, with the user's session environment, and waits for
it to end, so the launcher still sees one live process per app (coalescing, rate limit).

``HANDOFF_APP_LAUNCH``: ``spawn`` (the default), ``systemd-run`` (the user unit sets it), or
``auto`` (``systemd-run`` when the daemon itself runs as a systemd service, i.e.
``INVOCATION_ID`` is set and ``systemd-run`` is on ``PATH``; else ``spawn``).
"""

from __future__ import annotations

import re
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field

from handoffd.errors import ConfigError

ENV = "HANDOFF_APP_LAUNCH"
SPAWN = "spawn"
SYSTEMD_RUN = "systemd-run"
AUTO = "auto"
_UNIT_WORD = re.compile(r"[^A-Za-z0-9_.-]")


def _program(environ: Mapping[str, str]) -> str | None:
    return shutil.which(SYSTEMD_RUN, path=environ.get("PATH"))


@dataclass(frozen=True, slots=True)
class AppStarter:
    """Turns a launch (argv, environment) into the command that starts it."""

    mode: str = SPAWN
    program: str = SYSTEMD_RUN
    """The ``systemd-run`` to run (an absolute path when found on ``PATH``)."""
    base_env: Mapping[str, str] = field(default_factory=dict)
    """The daemon's own environment: only what a launch adds to it is passed to the unit."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> AppStarter:
        """The starter ``HANDOFF_APP_LAUNCH`` asks for (ConfigError if it is not a mode)."""
        wanted = environ.get(ENV, "").strip() or SPAWN
        if wanted not in (AUTO, SPAWN, SYSTEMD_RUN):
            raise ConfigError(
                f"{ENV} must be auto, spawn or systemd-run, not {wanted!r:.40}", code="bad-env"
            )
        found = _program(environ)
        if wanted == AUTO:
            wanted = SYSTEMD_RUN if environ.get("INVOCATION_ID") and found else SPAWN
        return cls(mode=wanted, program=found or SYSTEMD_RUN, base_env=dict(environ))

    def command(
        self, app_id: str, handoff_id: str, argv: tuple[str, ...], env: Mapping[str, str]
    ) -> tuple[tuple[str, ...], dict[str, str]]:
        """The argv and environment of the process to start for this launch."""
        if self.mode != SYSTEMD_RUN:
            return argv, dict(env)
        added = sorted((k, v) for k, v in env.items() if self.base_env.get(k) != v)
        unit = "-".join(
            (
                "handoff-app",
                _UNIT_WORD.sub("_", app_id)[:64],
                _UNIT_WORD.sub("_", handoff_id)[:16],
                secrets.token_hex(3),  # a relaunch of one handoff gets a unit of its own
            )
        )
        wrapper = (
            self.program, "--user", "--quiet", "--collect", "--wait",
            "--service-type=exec", f"--unit={unit}",
            f"--description=handoff: {app_id} resumes handoff {handoff_id}",
            *(f"--setenv={k}={v}" for k, v in added),
            "--", *argv,
        )  # fmt: skip
        # systemd-run itself needs the daemon's environment (XDG_RUNTIME_DIR: the user bus).
        return wrapper, dict(self.base_env)
