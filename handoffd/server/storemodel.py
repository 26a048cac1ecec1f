"""What the server store holds and hands out (accounts, devices, invites, issued certificates) and its input checks."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from handoffd.errors import ServerError
from handoffd.server import pairing

MAX_DEVICE_NAME = 64
MAX_ACCOUNT_NAME = 64
_PLATFORM_RE = re.compile(r"[A-Za-z0-9._+-]{1,32}")
_ACCOUNT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def refuse(message: str, code: str, status: int = 400) -> ServerError:
    """A store refusal: the API answers ``status`` with ``code``."""
    return ServerError(message, code=code, status=status)


def utc(ts: float) -> dt.datetime:
    """Unix seconds as an aware UTC datetime."""
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def check_device_name(name: object) -> str:
    """A device name: 1..64 characters after trimming, no control or format characters."""
    if not isinstance(name, str):
        raise refuse("device name must be a string", "name-invalid")
    name = unicodedata.normalize("NFC", name.strip())
    if not 1 <= len(name) <= MAX_DEVICE_NAME:
        raise refuse(f"device name must be 1..{MAX_DEVICE_NAME} characters", "name-invalid")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") for c in name):
        raise refuse("device name contains control characters", "name-invalid")
    return name


def check_platform(platform: object) -> str:
    """A platform word: 1..32 of ``A-Za-z0-9._+-``."""
    if not isinstance(platform, str) or not _PLATFORM_RE.fullmatch(platform):
        raise refuse("platform must be 1..32 of A-Z a-z 0-9 . _ + -", "platform-invalid")
    return platform


def check_account_name(name: str) -> str:
    """An account name: 1..64 of ``A-Za-z0-9._-``, starting with a letter or digit."""
    if not _ACCOUNT_RE.fullmatch(name):
        raise refuse(
            "account name must be 1..64 of A-Z a-z 0-9 . _ -, starting with a letter or digit",
            "account-name-invalid",
        )
    return name


@dataclass(frozen=True)
class Account:
    """An account (without its CA key)."""

    account_id: str
    name: str
    created_at: float
    has_password: bool
    ca_cert: x509.Certificate


@dataclass(frozen=True)
class Device:
    """A device of an account as stored."""

    device_id: str
    account_id: str
    name: str
    platform: str
    public_key: Ed25519PublicKey
    created_at: float
    last_seen: float | None
    revoked_at: float | None
    cert_not_after: float

    @property
    def revoked(self) -> bool:
        """True once revoked (permanent)."""
        return self.revoked_at is not None


@dataclass(frozen=True)
class NewInvite:
    """A freshly made invite: its id, account, plaintext secrets (show once) and expiry."""

    invite_id: int
    account_id: str
    secrets: pairing.InviteSecrets
    expires_at: float


@dataclass(frozen=True)
class Issued:
    """A device certificate just issued, with what the device needs next to it."""

    device_id: str
    account_id: str
    device_cert: x509.Certificate
    account_ca: x509.Certificate
    crl: x509.CertificateRevocationList
