"""Rules for strings from outside: they must be UTF-8, and names must look like what they are.

A Python ``str`` can hold a lone surrogate (``"\\ud800"``, from a JSON escape)
that no UTF-8 encoder accepts: :func:`has_non_utf8` finds one anywhere in a
decoded JSON value, so it is refused where the value enters (``not-utf8``)
rather than failing later in SQLite or a file write.

A *name* shown to people (an item's file name, a device's name) must also be
free of control characters (Cc), format characters (Cf: bidi overrides such
as U+202E, zero-width characters) and line or paragraph separators (Zl, Zp):
``"\\u202etxt.exe"`` is shown as ``exe.txt``. :func:`name_problem` and
:func:`file_name_problem` are the one place these rules live; the control API,
the settings and the receiver of a peer's offer all call them.
"""

from __future__ import annotations

import unicodedata
from typing import Any

MAX_FILE_NAME_BYTES = 255
# Cc control, Cf format (bidi, zero-width), Cs surrogate, Zl line and Zp paragraph separators.
REFUSED_IN_NAMES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def is_utf8(text: str) -> bool:
    """True unless ``text`` holds a lone surrogate (which UTF-8 cannot encode)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def has_non_utf8(value: Any) -> bool:
    """True if a string (or object key) anywhere in the decoded JSON ``value`` is not UTF-8."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not is_utf8(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be shown as a name (not UTF-8, or a Cc/Cf/Zl/Zp character); else None."""
    if not is_utf8(name):
        return "must be valid UTF-8"
    for c in name:
        category = unicodedata.category(c)
        if category in REFUSED_IN_NAMES:
            return (
                "must not contain control characters, format characters or line separators"
                f" (U+{ord(c):04X})"
            )
    return None


def file_name_problem(name: str) -> str | None:
    """Why ``name`` is not one safe file name (see name_problem; no separators or ``..``)."""
    problem = name_problem(name)
    if problem is not None:
        return problem
    if not 0 < len(name.encode("utf-8")) <= MAX_FILE_NAME_BYTES:
        return f"must be 1 to {MAX_FILE_NAME_BYTES} bytes"
    if ".." in name or name == ".":
        return "must not contain '..' or be '.'"
    if "/" in name or "\\" in name:
        return "must not contain '/' or '\\'"
    return None
