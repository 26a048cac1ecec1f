"""Device and account ids, device keys, purpose-bound Ed25519 signatures: the bottom of ``handoffd.identity``.

The only file I/O is reading and writing the device's private key, which must stay private.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from handoffd import ownership
from handoffd.errors import IdentityError, KeyFileError, VerificationError

DEVICE_CERT_LIFETIME = dt.timedelta(days=30)
CA_LIFETIME = dt.timedelta(days=365 * 20)
CRL_LIFETIME = dt.timedelta(days=7)
CLOCK_SKEW = dt.timedelta(minutes=5)
# Backdating covers a verifier whose clock is a little behind the issuer's.
BACKDATE = dt.timedelta(minutes=5)
MAX_PEM = 64 * 1024
DEVICE_URN = "urn:handoff:device:"
ACCOUNT_URN = "urn:handoff:account:"
SIGNATURE_DOMAIN = b"handoff/v1/"

# What cryptography raises for malformed input, now or when a field is first read.
PARSE_ERRORS = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)
_B32 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")


# ---------------------------------------------------------------- ids


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=")


def raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key."""
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def device_id_for(public_key: Ed25519PublicKey) -> str:
    """Device id: base32 (no padding) of the first 20 bytes of SHA-256 of the raw key."""
    return _b32(hashlib.sha256(raw_public_key(public_key)).digest()[:20])


def new_account_id() -> str:
    """A fresh random 128-bit account id in base32."""
    return _b32(secrets.token_bytes(16))


def format_device_id(device_id: str) -> str:
    """The id grouped in fours for humans: ``ABCD-EFGH-...``."""
    return "-".join(device_id[i : i + 4] for i in range(0, len(device_id), 4))


def parse_device_id(text: str) -> str:
    """Normalize a device id typed by a human (any case, dashes or spaces); raise if invalid."""
    cleaned = text.replace("-", "").replace(" ", "").upper()
    if not is_device_id(cleaned):
        raise IdentityError(f"not a device id: {text!r:.80}", code="bad-device-id")
    return cleaned


def is_device_id(text: str) -> bool:
    """True if ``text`` is a canonical device id (32 base32 characters)."""
    return len(text) == 32 and set(text) <= _B32


def is_account_id(text: str) -> bool:
    """True if ``text`` is a canonical account id (26 base32 characters)."""
    return len(text) == 26 and set(text) <= _B32


# ---------------------------------------------------------------- keys


def generate_device_key() -> Ed25519PrivateKey:
    """A new Ed25519 device key."""
    return Ed25519PrivateKey.generate()


def private_key_to_pem(key: Ed25519PrivateKey) -> bytes:
    """PEM, PKCS#8, unencrypted (the file's mode protects it)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def save_private_key(path: Path, key: Ed25519PrivateKey) -> None:
    """Write the key atomically with mode 0600 (never briefly readable by others)."""
    write_private_file(path, private_key_to_pem(key))


def write_private_file(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``, mode 0600, fsynced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load a PKCS#8 PEM Ed25519 key; refuse one that group or others can read."""
    data = ownership.read_private_file(
        path, limit=MAX_PEM + 1, what="device key", code="key", error=KeyFileError
    )
    if len(data) > MAX_PEM:
        raise KeyFileError(f"{path} is too large to be a key", code="key-malformed")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not a PEM PKCS#8 key", code="key-malformed") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key", code="key-malformed")
    return key


# ---------------------------------------------------------------- signatures


def _signed_bytes(purpose: str, data: bytes) -> bytes:
    if not purpose or "\x00" in purpose:
        raise ValueError("purpose must be a non-empty string without NUL")
    return SIGNATURE_DOMAIN + purpose.encode("utf-8") + b"\x00" + data


def sign(key: Ed25519PrivateKey, purpose: str, data: bytes) -> bytes:
    """Sign ``data`` under the domain ``handoff/v1/<purpose>``."""
    return key.sign(_signed_bytes(purpose, data))


def verify_signature(public_key: Ed25519PublicKey, purpose: str, data: bytes, sig: bytes) -> None:
    """Raise VerificationError(signature-invalid) unless ``sig`` signs ``data`` under ``purpose``."""
    try:
        public_key.verify(sig, _signed_bytes(purpose, data))
    except InvalidSignature:
        raise VerificationError(
            f"signature does not verify for {purpose}", code="signature-invalid"
        ) from None
