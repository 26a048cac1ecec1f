"""The one self-signed certificate builder (pure): the server's TLS certificate, the LAN listener's, benchmarks'."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["SigningKey", "self_signed"]

SigningKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def self_signed(
    key: SigningKey,
    name: x509.Name,
    *,
    not_before: dt.datetime,
    not_after: dt.datetime,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> x509.Certificate:
    """A certificate for ``key`` issued by itself to ``name`` (random serial; ``(extension, critical)`` pairs added)."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    # Ed25519 signs the whole message itself: no separate hash.
    return builder.sign(key, None if isinstance(key, Ed25519PrivateKey) else hashes.SHA256())
