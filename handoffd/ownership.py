"""Whose directories and sockets we trust: our own effective uid's only (ssh's StrictModes rule).

A directory we keep secrets in (a daemon's home, its ``run/`` and data
directories, the server's data directory) must be owned by the effective uid
and not writable by group or others; every directory above it must be owned
by root or by us and not writable by group or others unless it is sticky
(``/tmp``); a symbolic link on the way must be root's or ours. Otherwise
another local user could have made it, or could swap what is inside.

A file holding a secret (a device key, the TURN secret) must be a regular
file of ours that group and others cannot read (``read_private_file``).

A control socket's server must run as the effective uid (``SO_PEERCRED``):
another user serving ``run/control.sock`` must not see what we send. Root is
not accepted either: the daemon runs as its user, never as root for them.

Shared by the daemon, the SDK/CLI and the server: only the stdlib and
``handoffd.errors`` are imported.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from handoffd.errors import ConfigError, HandoffError

UNSAFE_DIR = "home-unsafe"
PRIVATE_DIR_MODE = 0o700


def _unsafe(path: Path, why: str, fix: str, code: str) -> ConfigError:
    return ConfigError(
        f"refusing {path}: {why}; another user could read or replace what is in it ({fix})",
        code=code,
    )


def make_private_dir(path: Path) -> None:
    """Create ``path`` and its missing parents with mode 0700; an existing one is left as it is."""
    missing: list[Path] = []
    p = path.absolute()
    while not os.path.lexists(p):
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        # Made meanwhile by someone else: check_private_dir judges whose it is.
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, PRIVATE_DIR_MODE)


def _check_links(path: Path, code: str) -> None:
    uid = os.geteuid()
    for p in (*reversed(path.parents), path):
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode) and st.st_uid not in (0, uid):
            why = f"it is a symbolic link of uid {st.st_uid}"
            raise _unsafe(p, why, "use a path of your own", code)


def check_private_dir(path: Path, *, above: bool = True, code: str = UNSAFE_DIR) -> None:
    """ConfigError(``code``) unless ``path`` is a directory only we (and root above it) control.

    ``above=False`` leaves the directories above it to the administrator (the server's data).
    FileNotFoundError if it does not exist.
    """
    try:
        _check_private_dir(path.absolute(), above, code)
    except PermissionError as exc:
        why = f"it cannot be examined ({exc.strerror})"
        raise _unsafe(path, why, "use a path of your own", code) from None


def _check_private_dir(given: Path, above: bool, code: str) -> None:
    uid = os.geteuid()
    if above:
        _check_links(given, code)
    real = Path(os.path.realpath(given))
    st = os.stat(real)
    if not stat.S_ISDIR(st.st_mode):
        raise _unsafe(real, "it is not a directory", "use a directory of your own", code)
    if st.st_uid != uid:
        why = f"it is owned by uid {st.st_uid}, not {uid}"
        raise _unsafe(real, why, "use a directory of your own", code)
    if st.st_mode & 0o022:
        why = f"its mode {stat.S_IMODE(st.st_mode):04o} lets group or others write"
        raise _unsafe(real, why, f"chmod 700 {real}", code)
    for parent in real.parents if above else ():
        st = os.stat(parent)
        if st.st_uid not in (0, uid):
            why = f"{parent} above it is owned by uid {st.st_uid}"
            raise _unsafe(real, why, "use a path of your own", code)
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            why = f"{parent} above it is writable by group or others and not sticky"
            raise _unsafe(real, why, "use a path of your own", code)


def ensure_private_dir(path: Path, *, above: bool = True, code: str = UNSAFE_DIR) -> None:
    """Create ``path`` 0700 if missing, then check_private_dir it (a race loses to the check)."""
    if above:
        _check_links(path.absolute(), code)  # nothing is made through another user's link
    make_private_dir(path)
    check_private_dir(path, above=above, code=code)


def read_private_file(
    path: Path, *, limit: int, what: str, code: str, error: type[HandoffError]
) -> bytes:
    """Up to ``limit`` bytes of ``path``, a regular file of ours that group and others cannot read.

    Otherwise ``error`` with code ``<code>-missing``, ``<code>-unreadable`` or
    ``<code>-permissions`` (the message says how to fix it). A symbolic link
    is not followed.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise error(f"no {what} at {path}", code=f"{code}-missing") from None
    except OSError as exc:
        raise error(f"cannot open {path}: {exc.strerror}", code=f"{code}-unreadable") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path} is not a regular file", code=f"{code}-unreadable")
        if st.st_mode & 0o077:
            mode = stat.S_IMODE(st.st_mode)
            raise error(
                f"{path} has mode {mode:04o}, readable by others; fix with: chmod 600 {path}",
                code=f"{code}-permissions",
            )
        if st.st_uid != os.geteuid():
            raise error(
                f"{path} is owned by uid {st.st_uid}, not by us; "
                f"fix with: chown {os.geteuid()} {path}",
                code=f"{code}-permissions",
            )
        return f.read(limit)
