"""The OpenAPI form of the settings of everyday handoff (``handoff send``, built-in receivers,
consent, notifications); ``openapi`` adds them to its ``Settings`` schema."""

from __future__ import annotations

from typing import Any

_ARGV = {"type": "array", "items": {"type": "string"}, "maxItems": 32}
_RULES = {
    "type": "array",
    "items": {"type": "string", "pattern": "^.+=(ask|accept|decline)$"},
    "maxItems": 256,
}
_POLICY = {"enum": ["ask", "accept", "decline"]}

SETTINGS_PROPERTIES: dict[str, Any] = {
    "send_max_files": {"type": "integer", "minimum": 1, "maximum": 1024},
    "send_max_bytes": {"type": "integer", "minimum": 1, "maximum": 64 * 1024**3},
    "receive_files": {"type": "boolean"},
    "receive_dir": {"type": "string", "description": "absolute; empty: <downloads>/Handoff"},
    "open_urls": {"type": "boolean"},
    "open_command": {**_ARGV, "description": "argv before the URL; empty: xdg-open / open"},
    "text_to_clipboard": {"type": "boolean"},
    "clipboard_command": {
        **_ARGV,
        "description": "argv reading the text on stdin; empty: wl-copy / xclip / pbcopy",
    },
    "consent_builtin": {**_POLICY, "description": "for sessions sent with handoff send"},
    "consent_apps": {**_RULES, "description": "APP_ID=POLICY (first match wins)"},
    "consent_devices": {**_RULES, "description": "DEVICE=POLICY, device id or name"},
    "consent_timeout": {"type": "integer", "minimum": 1, "maximum": 3600},
    "notifications": {"type": "boolean"},
    "offline_wait": {"type": "integer", "minimum": 0, "maximum": 30 * 86400},
}
