"""mDNS markers and TXT records (pure).

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
from collections.abc import Mapping
from dataclasses import dataclass

VERSION = "1"
SERVICE_TYPE = "_handoff._tcp.local."
DEVICE_MARKER_LEN = 20
ACCOUNT_MARKER_LEN = 16
MAX_TXT_KEYS = 16
MAX_TXT_VALUE = 64
_HEX = frozenset("0123456789abcdef")


def day_of(now: float) -> int:
    """The UTC day number of a Unix time."""
    return int(now // 86400)


def _mac(key: bytes, label: str, *parts: str) -> str:
    msg = ("handoff/v1/mdns/" + label + "\x00" + "\x00".join(parts)).encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def device_marker(key: bytes, device_id: str, day: int) -> str:
    """The day's marker of a device (also its mDNS instance name)."""
    return _mac(key, "device", device_id, str(day))[:DEVICE_MARKER_LEN]


def account_marker(key: bytes, day: int) -> str:
    """The day's marker of the account."""
    return _mac(key, "account", str(day))[:ACCOUNT_MARKER_LEN]


@dataclass(frozen=True, slots=True)
class Txt:
    """What a handoffd advertisement says."""

    version: str
    device: str
    account: str

    def encode(self) -> dict[str, str]:
        """TXT properties."""
        return {"v": self.version, "d": self.device, "a": self.account}


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and set(text) <= _HEX


def decode_txt(props: Mapping[bytes, bytes | None]) -> Txt | None:
    """Parse TXT properties strictly; None for anything malformed or of another version."""
    if len(props) > MAX_TXT_KEYS:
        return None
    values: dict[str, str] = {}
    for key, value in props.items():
        if value is None or len(key) > 16 or len(value) > MAX_TXT_VALUE:
            continue
        try:
            values[key.decode("ascii")] = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    version, device, account = values.get("v"), values.get("d"), values.get("a")
    if version != VERSION or device is None or account is None:
        return None
    if not _is_hex(device, DEVICE_MARKER_LEN) or not _is_hex(account, ACCOUNT_MARKER_LEN):
        return None
    return Txt(version=version, device=device, account=account)


class MarkerBook:
    """Maps markers back to device ids of the account (today's and yesterday's)."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._by_marker: dict[str, str] = {}
        self._accounts: set[str] = set()
        self._day = -1
        self._devices: frozenset[str] = frozenset()

    def update(self, devices: frozenset[str], now: float) -> None:
        """Recompute for these device ids on the current day (cheap when nothing changed)."""
        day = day_of(now)
        if day == self._day and devices == self._devices:
            return
        self._day, self._devices = day, devices
        # Yesterday's markers too: a peer's clock or cache may lag the day change.
        days = (day, day - 1)
        self._by_marker = {device_marker(self._key, d, x): d for d in devices for x in days}
        self._accounts = {account_marker(self._key, x) for x in days}

    def is_ours(self, txt: Txt) -> bool:
        """True if the account marker is our account's."""
        return txt.account in self._accounts

    def device_for(self, txt: Txt) -> str | None:
        """The device id behind a marker, if it is a device we know."""
        return self._by_marker.get(txt.device)
