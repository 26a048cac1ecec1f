"""Certificate revocation lists: issuing, their number, verifying one, choosing the newer."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from handoffd.errors import IdentityError, VerificationError
from handoffd.identity.certs import AccountCA
from handoffd.identity.keys import BACKDATE, CRL_LIFETIME

# ---------------------------------------------------------------- CRL


@dataclass(frozen=True, slots=True)
class Revoked:
    """One revoked certificate serial and when it was revoked."""

    serial: int
    revoked_at: dt.datetime


def issue_crl(
    ca: AccountCA,
    revoked: Iterable[Revoked],
    *,
    number: int,
    now: dt.datetime,
    lifetime: dt.timedelta = CRL_LIFETIME,
) -> x509.CertificateRevocationList:
    """Sign a CRL with CRL number ``number`` (callers keep it monotonic)."""
    if number < 1:
        raise IdentityError("CRL numbers start at 1", code="crl-number")
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - BACKDATE)
        .next_update(now + lifetime)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(entry.serial)
            .revocation_date(entry.revoked_at)
            .build()
        )
    return builder.sign(ca.key, None)


def crl_number(crl: x509.CertificateRevocationList) -> int:
    """The CRL's number (0 if it has none)."""
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


def verify_crl(crl: x509.CertificateRevocationList, ca_cert: x509.Certificate) -> int:
    """Check the CRL was signed by the account CA; return its number."""
    if crl.issuer != ca_cert.subject:
        raise VerificationError("CRL is from another account", code="crl-wrong-issuer")
    public_key = ca_cert.public_key()
    if not isinstance(public_key, Ed25519PublicKey) or not crl.is_signature_valid(public_key):
        raise VerificationError("CRL signature is invalid", code="crl-signature-invalid")
    number = crl_number(crl)
    if number < 1:
        raise VerificationError("CRL has no CRL number", code="crl-invalid")
    return number


def newer_crl(
    current: x509.CertificateRevocationList | None,
    candidate: x509.CertificateRevocationList,
    ca_cert: x509.Certificate,
) -> x509.CertificateRevocationList | None:
    """Return ``candidate`` if it is valid and newer than ``current``, else None (gossip rule)."""
    number = verify_crl(candidate, ca_cert)
    if current is not None and number <= crl_number(current):
        return None
    return candidate
