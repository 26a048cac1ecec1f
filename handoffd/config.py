"""Daemon settings: a frozen, validated ``Settings`` persisted in ``config.toml`` (mode 0600).

``accept_types`` lists the item types this device accepts in a handoff; the
single entry ``"*"`` (the default) means every type, including app-defined ones.
Values are flat (bool, int, str, list of str). The file is read with ``tomllib`` and
written with ``tomlkit`` into the document already there, so the user's comments, order
and layout stay; only changed values are rewritten (new keys go at the end).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from handoffd.errors import ConfigError
from handoffd.identity import write_private_file
from handoffd.names import APP_ID_RE as APP_ID_RE  # re-exported: older importers
from handoffd.names import KNOWN_TYPES as KNOWN_TYPES
from handoffd.names import TYPE_RE as TYPE_RE
from handoffd.names import is_type_word as is_type_word
from handoffd.text import name_problem

ALL_TYPES = "*"
MAX_DEVICE_NAME = 64
MAX_UNICAST_PEERS = 32
MAX_TTL = 365 * 24 * 3600
MAX_CONFIG_BYTES = 64 * 1024
_HOST_RE = re.compile(r"[A-Za-z0-9._-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")


def _default_device_name() -> str:
    name = socket.gethostname().split(".")[0].strip() or "device"
    return _clean_name(name[:MAX_DEVICE_NAME], "device_name")


@dataclass(frozen=True, slots=True)
class Settings:
    """What the user can set (``GET/PATCH /v1/settings``); always valid once constructed."""

    handoff_enabled: bool = True
    accept_types: tuple[str, ...] = (ALL_TYPES,)
    # Handoffs come only from the account's own certified devices: accept them unasked.
    auto_accept: bool = True
    device_name: str = field(default_factory=_default_device_name)
    inbox_ttl: int = 7 * 24 * 3600
    partial_ttl: int = 24 * 3600
    unicast_peers: tuple[str, ...] = ()
    # Advertise and browse with mDNS; off: peers are reached through the server (and unicast_peers).
    lan_discovery: bool = True
    # `handoff send PATH…`: at most this many files and bytes in one handoff.
    send_max_files: int = 1000
    send_max_bytes: int = 4 * 1024**3
    # Built-in receivers (sessions sent with `handoff send`, no app claims them): files into
    # receive_dir ("" = the user's download directory, subfolder Handoff); URLs opened with
    # open_command ([] = xdg-open / open) when open_urls; text and clipboard given to
    # clipboard_command ([] = wl-copy / xclip / pbcopy, whichever is present) when
    # text_to_clipboard, else kept in the inbox.
    receive_files: bool = True
    receive_dir: str = ""
    open_urls: bool = True
    open_command: tuple[str, ...] = ()
    text_to_clipboard: bool = True
    clipboard_command: tuple[str, ...] = ()
    # Consent, decided on the offer before any byte of the session moves: an app rule
    # ("APP_ID=POLICY"), else a device rule ("DEVICE=POLICY", device id or name), else
    # consent_builtin for the built-in receivers and accept for registered apps. POLICY is
    # ask, accept or decline; ask waits consent_timeout seconds for an answer (a desktop
    # notification, `handoff accept|decline ID`), then declines.
    consent_builtin: str = "ask"
    consent_apps: tuple[str, ...] = ()
    consent_devices: tuple[str, ...] = ()
    consent_timeout: int = 120
    # Desktop notifications (received, resumed, failed, asking); off: none are shown.
    notifications: bool = True
    # A handoff to a device known to be offline waits for it this long (0: tried and retried
    # at once, as if it were online).
    offline_wait: int = 24 * 3600

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _VALIDATORS[f.name](getattr(self, f.name), f.name))

    def accepts(self, item_type: str) -> bool:
        """True if items of ``item_type`` may be received."""
        return ALL_TYPES in self.accept_types or item_type in self.accept_types

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied; ConfigError for an unknown name or a bad value."""
        unknown = set(changes) - FIELD_NAMES
        if unknown:
            raise ConfigError(f"unknown setting {sorted(unknown)[0]!r}", code="setting-unknown")
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The settings as a JSON object (lists for tuples)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, strict: bool = True) -> Settings:
        """Build from a mapping (TOML table or JSON); unknown keys are an error if ``strict``."""
        unknown = set(data) - FIELD_NAMES
        if unknown and strict:
            raise ConfigError(f"unknown setting {sorted(unknown)[0]!r}", code="setting-unknown")
        return cls(**{k: v for k, v in data.items() if k in FIELD_NAMES})


def _bad(name: str, message: str) -> ConfigError:
    return ConfigError(f"{name}: {message}", code="setting-invalid")


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(name, "must be true or false")
    return value


def _check_ttl(value: Any, name: str) -> int:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 60 <= value <= MAX_TTL:
        raise _bad(name, f"must be a whole number of seconds from 60 to {MAX_TTL}")
    return value


def _clean_name(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise _bad(name, "must be a string")
    text: str = value.strip()
    if not text or len(text) > MAX_DEVICE_NAME:
        raise _bad(name, f"must be 1 to {MAX_DEVICE_NAME} characters")
    problem = name_problem(text)
    if problem is not None:
        raise _bad(name, problem)
    return text


def _check_types(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise _bad(name, 'must be a list of type words, or ["*"] for all')
    words = tuple(dict.fromkeys(value))
    if ALL_TYPES in words:
        if len(words) != 1:
            raise _bad(name, '"*" (all types) cannot be combined with other words')
        return words
    for word in words:
        if not is_type_word(word):
            raise _bad(name, f"{word!r:.40} is not a type word ([a-z][a-z0-9_-]{{0,31}})")
    if len(words) > 64:
        raise _bad(name, "too many types")
    return words


def _check_peers(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise _bad(name, "must be a list of HOST:PORT strings")
    if len(value) > MAX_UNICAST_PEERS:
        raise _bad(name, f"at most {MAX_UNICAST_PEERS} peers")
    for peer in value:
        parse_host_port(peer, name)
    return tuple(dict.fromkeys(value))


def parse_host_port(text: str, name: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 in brackets) → (host, port); ConfigError if malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not _HOST_RE.fullmatch(host) or not port.isdigit() or len(port) > 5:
        raise _bad(name, f"{text!r:.80} is not HOST:PORT")
    if not 1 <= int(port) <= 65535:
        raise _bad(name, f"{text!r:.80}: port out of range")
    return host.strip("[]"), int(port)


def _check_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1024:
        raise _bad(name, "must be a whole number from 1 to 1024")
    return value


def _check_bytes(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 64 * 1024**3:
        raise _bad(name, "must be a whole number of bytes from 1 to 64 GiB")
    return value


def _check_dir(value: Any, name: str) -> str:
    if not isinstance(value, str) or len(value) > 4096:
        raise _bad(name, "must be an absolute path, or empty for the default")
    if value and (not value.startswith("/") or name_problem(value) is not None):
        raise _bad(name, "must be an absolute path, or empty for the default")
    return value


def _check_argv(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise _bad(name, "must be a list of strings (a program and its arguments), or empty")
    if len(value) > 32 or any(not v or len(v) > 4096 or "\x00" in v for v in value):
        raise _bad(name, "must be a list of at most 32 non-empty strings")
    return tuple(value)


CONSENT_POLICIES = ("ask", "accept", "decline")


def _check_policy(value: Any, name: str) -> str:
    if value not in CONSENT_POLICIES:
        raise _bad(name, "must be ask, accept or decline")
    return str(value)


def _check_rules(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise _bad(name, "must be a list of NAME=POLICY strings")
    if len(value) > 256:
        raise _bad(name, "at most 256 rules")
    for rule in value:
        key, sep, policy = rule.rpartition("=")
        if not sep or not key or len(key) > 128 or policy not in CONSENT_POLICIES:
            raise _bad(name, f"{rule!r:.80} is not NAME=ask|accept|decline")
        if name_problem(key) is not None:
            raise _bad(name, f"{rule!r:.80}: {name_problem(key)}")
    return tuple(value)


def _check_seconds(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 3600:
        raise _bad(name, "must be a whole number of seconds from 1 to 3600")
    return value


def _check_wait(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 30 * 86400:
        raise _bad(name, "must be a whole number of seconds from 0 to 30 days")
    return value


def rule_for(rules: tuple[str, ...], *keys: str) -> str | None:
    """The policy of the first rule whose name is one of ``keys`` (None if none)."""
    for rule in rules:
        key, _sep, policy = rule.rpartition("=")
        if key in keys:
            return policy
    return None


_VALIDATORS: dict[str, Any] = {
    "consent_builtin": _check_policy,
    "consent_apps": _check_rules,
    "consent_devices": _check_rules,
    "consent_timeout": _check_seconds,
    "notifications": _check_bool,
    "offline_wait": _check_wait,
    "send_max_files": _check_count,
    "send_max_bytes": _check_bytes,
    "receive_files": _check_bool,
    "receive_dir": _check_dir,
    "open_urls": _check_bool,
    "open_command": _check_argv,
    "text_to_clipboard": _check_bool,
    "clipboard_command": _check_argv,
    "handoff_enabled": _check_bool,
    "accept_types": _check_types,
    "auto_accept": _check_bool,
    "lan_discovery": _check_bool,
    "device_name": _clean_name,
    "inbox_ttl": _check_ttl,
    "partial_ttl": _check_ttl,
    "unicast_peers": _check_peers,
}
FIELD_NAMES = frozenset(_VALIDATORS)


# ---------------------------------------------------------------- config.toml


def load_settings(path: Path) -> Settings:
    """Settings from ``path``; defaults if it does not exist; ConfigError if it is invalid."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Settings()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", code="config-unreadable") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is too large", code="config-invalid")
    try:
        table = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", code="config-invalid") from exc
    try:
        return Settings.from_mapping(table)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}", code=exc.code) from exc


HEADER = "# handoffd settings (written by handoffd; edits are read on SIGHUP or restart)"


def save_settings(path: Path, settings: Settings) -> None:
    """Write ``settings`` to ``path`` atomically, mode 0600, keeping the file's comments and
    order (only the values that changed are rewritten)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        old = None
    else:
        old = data.decode("utf-8", "replace") if len(data) <= MAX_CONFIG_BYTES else None
    write_private_file(path, update_toml(old, settings.to_json()).encode("utf-8"))


def update_toml(text: str | None, table: Mapping[str, Any]) -> str:
    """``text`` (a TOML document, or None for a new one) with the keys of ``table`` set.

    Keys whose value is unchanged keep their exact text; changed ones keep their place and
    their trailing comment; new ones are appended. A document tomlkit cannot parse is
    replaced by a fresh one (the daemon could not have loaded it either).
    """
    import tomlkit  # only when writing: the CLI reads settings without it
    from tomlkit.exceptions import TOMLKitError

    doc: tomlkit.TOMLDocument | None = None
    if text is not None:
        try:
            doc = tomlkit.parse(text)
        except TOMLKitError:
            doc = None
    if doc is None:
        doc = tomlkit.document()
        doc.add(tomlkit.comment(HEADER.removeprefix("# ")))
    for key, value in table.items():
        if key in doc and _unwrap(doc[key]) == _plain(value):
            continue
        doc[key] = _plain(value)
    return tomlkit.dumps(doc)


def dumps_toml(table: Mapping[str, Any]) -> str:
    """A new flat TOML document of bool, int, finite float, str and lists of those."""
    for value in table.values():
        _check_value(value)
    return update_toml(None, table)


def show_value(value: Any) -> str:
    """A setting's value for people: ``true``/``false``, lists comma-separated."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(show_value(v) for v in value)
    return str(value)


def _unwrap(item: Any) -> Any:
    return item.unwrap() if hasattr(item, "unwrap") else item


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _check_value(value: Any) -> None:
    if isinstance(value, (list, tuple)):
        for v in value:
            _check_value(v)
    elif isinstance(value, float) and not math.isfinite(value):
        raise TypeError("cannot write a non-finite float as TOML")
    elif not isinstance(value, (bool, int, float, str)):
        raise TypeError(f"cannot write {type(value).__name__} as TOML")


class SettingsFile:
    """The settings in force and their file; changes are validated, then persisted, then applied."""

    def __init__(self, path: Path, settings: Settings) -> None:
        self.path = path
        self.current = settings
        self._lock = asyncio.Lock()

    @classmethod
    def load(cls, path: Path) -> SettingsFile:
        """Read ``path`` (defaults if missing). Blocking."""
        return cls(path, load_settings(path))

    async def update(self, changes: Mapping[str, Any]) -> Settings:
        """Apply ``changes`` (ConfigError if invalid: nothing changes), persist, return the result."""
        async with self._lock:
            updated = self.current.replace(**changes)
            if updated != self.current or not self.path.exists():
                await asyncio.to_thread(save_settings, self.path, updated)
            self.current = updated
            return updated

    async def reload(self) -> Settings:
        """Re-read the file (SIGHUP); ConfigError if invalid, and the old settings stay."""
        async with self._lock:
            self.current = await asyncio.to_thread(load_settings, self.path)
            return self.current
