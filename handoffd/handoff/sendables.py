"""What ``handoff send PATH… | --text | --url | --clipboard`` hands off: a session built by the
daemon from files and folders (blocking: it walks and checks them), a text, a URL or the
clipboard's text, under the built-in app ids the target's built-in receivers claim.

Every refusal is an ``InvalidRequestError`` with one clear line and a stable code, raised
before anything is recorded or sent: a missing or unreadable path, a FIFO, socket or device
file, a symlink inside a folder that leaves it (not followed), more files or bytes than the
limits, a URL that is not http(s), a text over the size limit.

A folder's structure travels in the session's context (``{"kind": "files", "files": {item
name: relative path}}``): item names stay single, validated path components, and the
receiver checks every component of a relative path again before it uses it.
"""

from __future__ import annotations

import json
import mimetypes
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from handoffd.errors import InvalidRequestError
from handoffd.items import DEFAULT_MIME, Item
from handoffd.text import file_name_problem, name_problem

APP_FILES = "handoff.files"
APP_TEXT = "handoff.text"
APP_URL = "handoff.url"
APP_CLIPBOARD = "handoff.clipboard"
BUILTIN_APPS = frozenset({APP_FILES, APP_TEXT, APP_URL, APP_CLIPBOARD})
TYPE_FILE = "file"
MAX_SEND_TEXT = 1024 * 1024
MAX_URL = 8192
MAX_CONTEXT = 64 * 1024
MAX_DEPTH = 64
MAX_TITLE = 200


@dataclass(frozen=True, slots=True)
class Sendable:
    """A session to publish and hand off at once."""

    app_id: str
    title: str
    items: tuple[Item, ...]
    context: dict[str, Any] = field(default_factory=dict)


def _bad(message: str, code: str) -> InvalidRequestError:
    return InvalidRequestError(message, code=code)


def _title(text: str) -> str:
    one_line = " ".join(text.split())
    title = one_line[:MAX_TITLE] + ("…" if len(one_line) > MAX_TITLE else "")
    return title if title and name_problem(title) is None else "text"


def text(value: str) -> Sendable:
    """A piece of text (``--text``)."""
    _check_text(value, "the text")
    return Sendable(APP_TEXT, _title(value), (Item.of_text("message", "text.txt", value),))


def clipboard(value: str) -> Sendable:
    """The sender's clipboard text (``--clipboard``)."""
    _check_text(value, "the clipboard")
    return Sendable(
        APP_CLIPBOARD, _title(value), (Item.of_text("clipboard", "clipboard.txt", value),)
    )


def url(value: str) -> Sendable:
    """A http(s) URL (``--url``)."""
    if len(value) > MAX_URL:
        raise _bad(f"the URL is longer than {MAX_URL} characters", "url-too-long")
    parts = urlsplit(value)
    if (
        parts.scheme.lower() not in ("http", "https")
        or not parts.netloc
        or any(not ch.isprintable() or ch.isspace() for ch in value)
    ):
        raise _bad(f"not a http(s) URL: {value[:200]!r}", "url-invalid")
    return Sendable(
        APP_URL, _title(value), (Item.of_text("url", "url.txt", value, mime="text/uri-list"),)
    )


def _check_text(value: str, what: str) -> None:
    if not value:
        raise _bad(f"{what} is empty: nothing to send", "text-empty")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_SEND_TEXT:
        raise _bad(f"{what} is {size} bytes; at most {MAX_SEND_TEXT} are sent", "text-too-large")


# ---------------------------------------------------------------- files and folders


@dataclass
class _Walk:
    max_files: int
    max_bytes: int
    found: list[tuple[str, str, int, float]] = field(default_factory=list)
    """(absolute path, relative path, size, mtime) per file."""
    total: int = 0

    def add(self, path: str, rel: str, st: os.stat_result) -> None:
        if len(self.found) >= self.max_files:
            raise _bad(
                f"more than {self.max_files} files: send fewer (the limit is the setting"
                " send_max_files)",
                "too-many-files",
            )
        self.total += st.st_size
        if self.total > self.max_bytes:
            raise _bad(
                f"more than {self.max_bytes} bytes: send less (the limit is the setting"
                " send_max_bytes)",
                "too-many-bytes",
            )
        _readable(path)
        self.found.append((path, rel, st.st_size, st.st_mtime))


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    return "not a regular file"


def _readable(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise _bad(f"cannot read {path}: {exc.strerror}", "path-unreadable") from None
    os.close(fd)


def _component(name: str, path: str) -> str:
    problem = file_name_problem(name)
    if problem is not None:
        raise _bad(f"cannot send {path!r}: its name {problem}", "path-bad-name")
    return name


def _walk_dir(walk: _Walk, root: str, directory: str, rel: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _bad(f"{directory} is nested more than {MAX_DEPTH} folders deep", "path-too-deep")
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise _bad(
            f"cannot read the folder {directory}: {exc.strerror}", "path-unreadable"
        ) from None
    for name in names:
        path = os.path.join(directory, name)
        child = f"{rel}/{_component(name, path)}"
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            target = os.path.realpath(path)
            if os.path.commonpath([target, root]) != root:
                raise _bad(
                    f"{path} is a symlink that leaves {root} (not followed)", "path-symlink-out"
                )
            try:
                st = os.stat(path)
            except OSError as exc:
                raise _bad(f"{path} is a broken symlink: {exc.strerror}", "path-missing") from None
            if stat.S_ISDIR(st.st_mode):
                raise _bad(f"{path} is a symlink to a folder (not followed)", "path-symlink-dir")
        if stat.S_ISDIR(st.st_mode):
            _walk_dir(walk, root, path, child, depth + 1)
        elif stat.S_ISREG(st.st_mode):
            walk.add(path, child, st)
        else:
            raise _bad(f"{path} is {_kind(st.st_mode)}: only files and folders", "path-not-file")


def files(paths: Sequence[str], *, max_files: int, max_bytes: int) -> Sendable:
    """Files and folders (absolute paths); folders are walked in name order. Blocking."""
    if not paths:
        raise _bad("no path to send", "path-missing")
    walk = _Walk(max_files, max_bytes)
    for raw in paths:
        if not os.path.isabs(raw):
            raise _bad(f"{raw!r} is not an absolute path", "path-not-absolute")
        path = os.path.normpath(raw)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise _bad(f"no such file or folder: {path}", "path-missing") from None
        except OSError as exc:
            raise _bad(f"cannot read {path}: {exc.strerror}", "path-unreadable") from None
        name = _component(os.path.basename(path) or "root", path)
        if stat.S_ISDIR(st.st_mode):
            before = len(walk.found)
            root = os.path.realpath(path)
            _walk_dir(walk, root, root, name, 0)
            if len(walk.found) == before:
                raise _bad(f"the folder {path} holds no file: nothing to send", "path-empty")
        elif stat.S_ISREG(st.st_mode):
            walk.add(path, name, st)
        else:
            raise _bad(f"{path} is {_kind(st.st_mode)}: only files and folders", "path-not-file")
    taken: set[str] = {"manifest.json"}
    items: list[Item] = []
    mapping: dict[str, str] = {}
    for path, rel, size, mtime in walk.found:
        item_name = _unique(rel.rsplit("/", 1)[-1], taken)
        mime = mimetypes.guess_type(item_name)[0] or DEFAULT_MIME
        items.append(Item(TYPE_FILE, item_name, mime.lower(), "path", size, path=path, mtime=mtime))
        mapping[item_name] = rel
    context: dict[str, Any] = {"kind": "files", "files": mapping}
    if len(json.dumps(context, ensure_ascii=False).encode("utf-8")) > MAX_CONTEXT:
        raise _bad("the file names are too long all together: send fewer", "too-many-files")
    tops = sorted({rel.split("/", 1)[0] for _p, rel, _s, _m in walk.found})
    title = tops[0] if len(tops) == 1 else f"{len(walk.found)} files"
    return Sendable(APP_FILES, _title(title), tuple(items), context)


def _unique(name: str, taken: set[str]) -> str:
    stem, dot, ext = name.rpartition(".")
    if not stem:
        stem, dot, ext = name, "", ""
    candidate, n = name, 1
    while candidate.casefold() in taken:
        n += 1
        candidate = f"{stem} ({n}){dot}{ext}"
        if len(candidate.encode("utf-8")) > 255:
            candidate = f"file-{len(taken)}-{n}"
    taken.add(candidate.casefold())
    return candidate
