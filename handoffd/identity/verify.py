"""Verifying a device certificate against a trust anchor (the account CA and its CRL)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from handoffd.errors import VerificationError
from handoffd.identity.certs import ca_account_id, san_uris
from handoffd.identity.crl import crl_number, newer_crl, verify_crl
from handoffd.identity.keys import ACCOUNT_URN, CLOCK_SKEW, DEVICE_URN, PARSE_ERRORS, device_id_for
from handoffd.identity.pem import cert_to_der, fingerprint

# ---------------------------------------------------------------- verification


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """What a verified device certificate says."""

    device_id: str
    account_id: str
    serial: int
    not_after: dt.datetime
    cert: x509.Certificate


@dataclass(frozen=True, slots=True)
class TrustAnchor:
    """What a device trusts: its account CA (pinned at pairing) and the newest CRL it has."""

    ca_cert: x509.Certificate
    account_id: str
    crl: x509.CertificateRevocationList | None = None

    @classmethod
    def from_ca(
        cls, ca_cert: x509.Certificate, crl: x509.CertificateRevocationList | None = None
    ) -> TrustAnchor:
        """Build from a CA certificate; the CRL, if given, must verify against it."""
        if crl is not None:
            verify_crl(crl, ca_cert)
        return cls(ca_cert=ca_cert, account_id=ca_account_id(ca_cert), crl=crl)

    def with_crl(self, crl: x509.CertificateRevocationList) -> TrustAnchor:
        """A copy holding ``crl`` if it is valid and newer; otherwise self."""
        newer = newer_crl(self.crl, crl, self.ca_cert)
        if newer is None:
            return self
        return TrustAnchor(ca_cert=self.ca_cert, account_id=self.account_id, crl=newer)

    @property
    def crl_number(self) -> int:
        """The number of the CRL held, 0 if none."""
        return 0 if self.crl is None else crl_number(self.crl)


def cert_device_id(cert: x509.Certificate) -> str | None:
    """The device id in a certificate's SAN, if exactly one; None otherwise."""
    ids = [u[len(DEVICE_URN) :] for u in san_uris(cert) if u.startswith(DEVICE_URN)]
    return ids[0] if len(ids) == 1 else None


def verify_device_cert(
    cert: x509.Certificate,
    trust: TrustAnchor,
    *,
    now: dt.datetime,
    expected_device: str | None = None,
    self_device: str | None = None,
    skew: dt.timedelta = CLOCK_SKEW,
) -> PeerIdentity:
    """The one check of a device certificate; each failure has its own code.

    Chain to the pinned account CA, validity (with clock skew), account match,
    device id matches the key, not revoked, optionally the expected peer and not
    ourselves.
    """
    try:
        return _verify_device_cert(cert, trust, now, expected_device, self_device, skew)
    except PARSE_ERRORS as exc:  # cryptography parses fields lazily
        raise VerificationError("certificate is malformed", code="cert-malformed") from exc


def _verify_device_cert(
    cert: x509.Certificate,
    trust: TrustAnchor,
    now: dt.datetime,
    expected_device: str | None,
    self_device: str | None,
    skew: dt.timedelta,
) -> PeerIdentity:
    if cert.issuer != trust.ca_cert.subject:
        raise VerificationError("certificate is from another account", code="cert-wrong-account")
    try:
        cert.verify_directly_issued_by(trust.ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise VerificationError(
            "certificate signature does not verify (tampered?)", code="cert-signature-invalid"
        ) from exc
    if now + skew < cert.not_valid_before_utc:
        raise VerificationError("certificate is not yet valid", code="cert-not-yet-valid")
    if now - skew > cert.not_valid_after_utc:
        raise VerificationError("certificate has expired", code="cert-expired")
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError):
        raise VerificationError(
            "certificate lacks basic constraints", code="cert-invalid"
        ) from None
    if bc.ca:
        raise VerificationError("a CA certificate is not a device", code="cert-invalid")
    uris = san_uris(cert)
    devices = [u[len(DEVICE_URN) :] for u in uris if u.startswith(DEVICE_URN)]
    accounts = [u[len(ACCOUNT_URN) :] for u in uris if u.startswith(ACCOUNT_URN)]
    if len(devices) != 1 or len(accounts) != 1:
        raise VerificationError(
            "certificate must name one device and one account", code="cert-invalid"
        )
    if accounts[0] != trust.account_id:
        raise VerificationError("certificate is from another account", code="cert-wrong-account")
    public_key = cert.public_key()
    if not isinstance(public_key, Ed25519PublicKey):
        raise VerificationError("device key is not Ed25519", code="cert-invalid")
    device_id = devices[0]
    if device_id != device_id_for(public_key):
        raise VerificationError(
            "certificate's device id does not match its key", code="cert-device-id-mismatch"
        )
    if trust.crl is not None and trust.crl.get_revoked_certificate_by_serial_number(
        cert.serial_number
    ):
        raise VerificationError("certificate has been revoked", code="cert-revoked")
    if expected_device is not None and device_id != expected_device:
        raise VerificationError("certificate is for another device", code="cert-wrong-device")
    if self_device is not None and device_id == self_device:
        raise VerificationError("certificate is our own", code="cert-is-self")
    return PeerIdentity(
        device_id=device_id,
        account_id=accounts[0],
        serial=cert.serial_number,
        not_after=cert.not_valid_after_utc,
        cert=cert,
    )


def fingerprint_cert(cert: x509.Certificate) -> str:
    """``sha256:<hex>`` of a certificate's DER."""
    return fingerprint(cert_to_der(cert))
