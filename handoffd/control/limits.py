"""The control API's size and shape limits (shared by validation and the OpenAPI document)."""

from __future__ import annotations

import re

MAX_BODY = 16 * 1024 * 1024
MAX_CONTEXT = 64 * 1024
MAX_ITEMS = 1024
MAX_TEXT_ITEM = 1024 * 1024
MAX_DATA_ITEM = 8 * 1024 * 1024
MAX_NAME_BYTES = 255
MAX_TITLE = 256
MAX_PATH = 4096
MAX_ARGV = 64
MAX_ARG = 4096
MAX_INVITE = 2048
MAX_JSON_DEPTH = 64
MIME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}")
SESSION_ID_RE = re.compile(r"[0-9a-f]{32}")
MAX_TYPES = 64  # item types a handoff may be limited to
