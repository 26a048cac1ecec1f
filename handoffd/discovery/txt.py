"""mDNS markers, instance names and TXT records (pure).

Strangers on the LAN must not learn a stable account or device identity from
our advertisement. So the instance name and TXT carry only *markers*: short
HMAC-SHA256 values keyed by the account CA's public key (which only the
account's devices hold) over the device id or the account id and the UTC day.
They change every day; within an account a device maps a marker back to a
device id by computing the markers of the devices it knows. Discovery is only
a hint: the peer is authenticated by its certificate when we connect.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

VERSION = "1"
SERVICE_TYPE = "_handoff._tcp.local."
DEVICE_MARKER_LEN = 20
ACCOUNT_MARKER_LEN = 16
MAX_TXT_KEYS = 16
MAX_TXT_KEY = 16
MAX_TXT_VALUE = 64
MAX_TXT_BYTES = 1300
_HEX = frozenset("0123456789abcdef")
# Days whose markers we accept: clocks and caches around midnight disagree by a little.
MARKER_DAYS = (-1, 0, 1)


def day_of(now: float) -> int:
    """The UTC day number of a Unix time."""
    return int(now // 86400)


def _mac(key: bytes, label: str, *parts: str) -> str:
    msg = ("handoff/v1/mdns/" + label + "\x00" + "\x00".join(parts)).encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def device_marker(key: bytes, device_id: str, day: int) -> str:
    """The day's marker of a device (also its mDNS instance label and host label)."""
    return _mac(key, "device", device_id, str(day))[:DEVICE_MARKER_LEN]


def account_marker(key: bytes, day: int) -> str:
    """The day's marker of the account."""
    return _mac(key, "account", str(day))[:ACCOUNT_MARKER_LEN]


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and set(text) <= _HEX


def instance_name(marker: str) -> str:
    """The mDNS service instance name of a device marker."""
    return f"{marker}.{SERVICE_TYPE}"


def host_name(marker: str) -> str:
    """The mDNS host name of a device marker (no stable hostname leaks)."""
    return f"{marker}.local."


def marker_of(name: str) -> str | None:
    """The device marker in an instance name of ours, or None if it is not one."""
    label, dot, rest = name.lower().partition(".")
    if not dot or rest != SERVICE_TYPE or not _is_hex(label, DEVICE_MARKER_LEN):
        return None
    return label


@dataclass(frozen=True, slots=True)
class Txt:
    """What a handoffd advertisement says."""

    version: str
    device: str
    account: str

    def encode(self) -> dict[str, str]:
        """TXT properties."""
        return {"v": self.version, "d": self.device, "a": self.account}


def parse_txt_record(raw: bytes) -> dict[bytes, bytes | None] | None:
    """Split raw TXT rdata into properties (RFC 6763 §6); None if malformed or too big.

    Keys are lower-cased; the first occurrence of a key wins; empty strings are
    skipped; at most ``MAX_TXT_KEYS`` entries are kept.
    """
    if len(raw) > MAX_TXT_BYTES:
        return None
    props: dict[bytes, bytes | None] = {}
    i = 0
    while i < len(raw):
        n = raw[i]
        if i + 1 + n > len(raw):
            return None  # a length byte that runs past the end
        entry = raw[i + 1 : i + 1 + n]
        i += 1 + n
        key, eq, value = entry.partition(b"=")
        if not key:
            continue
        key = key.lower()
        if key in props:
            continue
        if len(props) >= MAX_TXT_KEYS:
            break
        props[key] = value if eq else None
    return props


def decode_txt(props: Mapping[bytes, bytes | None]) -> Txt | None:
    """Parse TXT properties strictly; None for anything malformed or of another version.

    Unknown keys are ignored (the format can grow); the known ones must be
    exactly right.
    """
    if len(props) > MAX_TXT_KEYS:
        return None
    values: dict[str, str] = {}
    for key, value in props.items():
        if value is None or len(key) > MAX_TXT_KEY or len(value) > MAX_TXT_VALUE:
            continue
        try:
            name, text = key.decode("ascii").lower(), value.decode("ascii")
        except UnicodeDecodeError:
            return None
        values.setdefault(name, text)
    version, device, account = values.get("v"), values.get("d"), values.get("a")
    if version != VERSION or device is None or account is None:
        return None
    if not _is_hex(device, DEVICE_MARKER_LEN) or not _is_hex(account, ACCOUNT_MARKER_LEN):
        return None
    return Txt(version=version, device=device, account=account)


class MarkerBook:
    """Maps markers back to device ids of the account (yesterday's, today's, tomorrow's)."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._by_marker: dict[str, str] = {}
        self._accounts: set[str] = set()
        self._day: int | None = None
        self._devices: frozenset[str] = frozenset()

    def update(self, devices: Iterable[str], now: float) -> None:
        """Recompute for these device ids on the current day (cheap when nothing changed)."""
        day, devices = day_of(now), frozenset(devices)
        if day == self._day and devices == self._devices:
            return
        self._day, self._devices = day, devices
        days = [day + d for d in MARKER_DAYS]
        self._by_marker = {device_marker(self._key, d, x): d for d in devices for x in days}
        self._accounts = {account_marker(self._key, x) for x in days}

    def is_ours(self, txt: Txt) -> bool:
        """True if the account marker is our account's."""
        return txt.account in self._accounts

    def device_for(self, txt: Txt) -> str | None:
        """The device id behind a TXT's device marker, if it is a device we know."""
        return self._by_marker.get(txt.device)

    def device_for_marker(self, marker: str) -> str | None:
        """The device id behind a device marker, if it is a device we know."""
        return self._by_marker.get(marker)
