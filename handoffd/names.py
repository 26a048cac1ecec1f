"""The shapes of app ids and item type words (pure: shared by the settings, the control API's
models and the handoff engine; light enough for the SDK to import)."""

from __future__ import annotations

import re

KNOWN_TYPES = ("message", "document", "clipboard", "url")
TYPE_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
APP_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def is_type_word(word: str) -> bool:
    """True for a valid item type: a known one or an app-defined ``[a-z][a-z0-9_-]{0,31}``."""
    return TYPE_RE.fullmatch(word) is not None
