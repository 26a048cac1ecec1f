"""Built-in receivers for sessions sent with ``handoff send`` that no registered app claims:
files and folders saved under the download directory (never overwriting: a numbered name on
conflict), a URL opened in the default browser, a text or clipboard text given to the
clipboard. Each is a setting (``receive_files``, ``open_urls``, ``text_to_clipboard``); what a
receiver does not take stays in the inbox (``handoff inbox open ID`` later).

Everything from the peer stays hostile until checked here: relative paths of a folder are
split and each component checked as a file name; a URL must be http(s) again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import platformdirs

from handoffd.config import Settings, SettingsFile
from handoffd.errors import HandoffError
from handoffd.handoff import sendables
from handoffd.handoff.tables import InboxEntry
from handoffd.text import file_name_problem

logger = logging.getLogger("handoffd.handoff.receivers")

SUBFOLDER = "Handoff"
COPY_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("wl-copy",),
    ("xclip", "-selection", "clipboard"),
    ("pbcopy",),
)
COMMAND_TIMEOUT = 30.0
MAX_NUMBER = 10_000


def receive_dir(settings: Settings) -> Path:
    """Where received files go: the setting, or ``<downloads>/Handoff``."""
    if settings.receive_dir:
        return Path(settings.receive_dir)
    return Path(platformdirs.user_downloads_dir()) / SUBFOLDER


def _numbered(name: str, n: int) -> str:
    if n == 1:
        return name
    stem, dot, ext = name.rpartition(".")
    if not stem or dot == "":
        return f"{name} ({n})"
    return f"{stem} ({n}).{ext}"


def relative_parts(entry: InboxEntry, item: Mapping[str, Any]) -> list[str]:
    """Where the sender had the item (``[folder, …, name]``), each part checked; the item's
    own name if the sender's path is missing or malformed."""
    name = str(item.get("name", ""))
    files = entry.context.get("files")
    rel = files.get(name) if isinstance(files, dict) else None
    if isinstance(rel, str) and len(rel) <= 4096:
        parts = rel.split("/")
        if len(parts) <= sendables.MAX_DEPTH + 1 and all(
            file_name_problem(p) is None for p in parts
        ):
            return parts
    return [name]


def _place(src: str, dest: Path) -> None:
    """``src`` at ``dest`` (hard link if it can, else a copy), never over an existing file."""
    try:
        os.link(src, dest, follow_symlinks=False)
        return
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
    with open(src, "rb") as r, open(dest, "xb") as w:
        shutil.copyfileobj(r, w, 1024 * 1024)


def save_files(entry: InboxEntry, root: Path) -> list[Path]:
    """Save the entry's files under ``root``; the top-level paths made. Blocking."""
    root.mkdir(parents=True, exist_ok=True)
    tops: dict[str, Path] = {}
    made: list[Path] = []
    for item in entry.items:
        src = item.get("path")
        if not isinstance(src, str):
            continue
        parts = relative_parts(entry, item)
        top = parts[0]
        if len(parts) == 1:
            made.append(_new_file(src, root, top))
            continue
        if top not in tops:
            tops[top] = _new_dir(root, top)
            made.append(tops[top])
        folder = tops[top]
        for part in parts[1:-1]:
            folder = folder / part
            folder.mkdir(exist_ok=True)
        _place(src, folder / parts[-1])
    return made


def _new_file(src: str, root: Path, name: str) -> Path:
    for n in range(1, MAX_NUMBER):
        dest = root / _numbered(name, n)
        try:
            _place(src, dest)
        except FileExistsError:
            continue
        return dest
    raise HandoffError(f"no free name for {name} in {root}", code="receive-no-name")


def _new_dir(root: Path, name: str) -> Path:
    for n in range(1, MAX_NUMBER):
        dest = root / (name if n == 1 else f"{name} ({n})")
        try:
            dest.mkdir()
        except FileExistsError:
            continue
        return dest
    raise HandoffError(f"no free name for {name} in {root}", code="receive-no-name")


def _read_text(entry: InboxEntry) -> str | None:
    for item in entry.items:
        path = item.get("path")
        if isinstance(path, str) and int(item.get("size", 0)) <= sendables.MAX_SEND_TEXT:
            try:
                return Path(path).read_text("utf-8")
            except (OSError, UnicodeDecodeError):
                return None
    return None


def _first_present(candidates: Sequence[Sequence[str]]) -> list[str] | None:
    for argv in candidates:
        program = shutil.which(argv[0])
        if program is not None:
            return [program, *argv[1:]]
    return None


async def _run(argv: Sequence[str], stdin: bytes | None) -> bool:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        logger.warning("receiver command failed program=%s error=%s", argv[0], exc.strerror)
        return False
    try:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            await proc.communicate(stdin)
    except TimeoutError:
        # A clipboard owner (xclip) may stay to serve the selection: it did take it.
        logger.info("receiver command still running program=%s pid=%d", argv[0], proc.pid)
        return True
    if proc.returncode != 0:
        logger.warning("receiver command failed program=%s status=%s", argv[0], proc.returncode)
    return proc.returncode == 0


class Receivers:
    """Takes a received built-in session if its setting allows; True if it was taken."""

    def __init__(self, settings: SettingsFile) -> None:
        self.settings = settings

    async def take(self, entry: InboxEntry, *, force: bool = False) -> bool:
        """Save, open or copy ``entry`` (if its setting allows, or ``force``); False leaves it
        in the inbox."""
        s: Settings = self.settings.current
        try:
            if entry.app_id == sendables.APP_FILES:
                return (force or s.receive_files) and await self._files(entry, receive_dir(s))
            if entry.app_id == sendables.APP_URL:
                return (force or s.open_urls) and await self._url(entry, s)
            if entry.app_id in (sendables.APP_TEXT, sendables.APP_CLIPBOARD):
                return (force or s.text_to_clipboard) and await self._clipboard(entry, s)
        except (OSError, HandoffError) as exc:
            logger.warning(
                "built-in receiver failed error=%s",
                getattr(exc, "code", exc),
                extra={"handoff": entry.id},
            )
        return False

    async def _files(self, entry: InboxEntry, root: Path) -> bool:
        made = await asyncio.to_thread(save_files, entry, root)
        logger.info("files saved count=%d", len(made), extra={"handoff": entry.id})
        return True

    async def _url(self, entry: InboxEntry, s: Settings) -> bool:
        text = await asyncio.to_thread(_read_text, entry)
        if text is None:
            return False
        try:
            sendables.url(text)
        except HandoffError:
            logger.warning("received URL refused", extra={"handoff": entry.id})
            return False
        default = ("open",) if sys.platform == "darwin" else ("xdg-open",)
        argv = list(s.open_command) if s.open_command else _first_present([default])
        if argv is None:
            return False
        return await _run([*argv, text], None)

    async def _clipboard(self, entry: InboxEntry, s: Settings) -> bool:
        text = await asyncio.to_thread(_read_text, entry)
        if text is None:
            return False
        argv = list(s.clipboard_command) if s.clipboard_command else _first_present(COPY_COMMANDS)
        if argv is None:
            return False
        with contextlib.suppress(UnicodeEncodeError):
            return await _run(argv, text.encode("utf-8"))
        return False
