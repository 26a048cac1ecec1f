"""Certificates, CSRs and CRLs in and out of PEM/DER, bounded and strict."""

from __future__ import annotations

import hashlib
import warnings

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.utils import CryptographyDeprecationWarning

from handoffd.errors import IdentityError
from handoffd.identity.keys import MAX_PEM, PARSE_ERRORS

# ---------------------------------------------------------------- PEM / DER


def _check_size(data: bytes, what: str) -> None:
    if len(data) > MAX_PEM:
        raise IdentityError(f"{what} is larger than {MAX_PEM} bytes", code=f"{what}-malformed")


def cert_to_pem(cert: x509.Certificate) -> bytes:
    """PEM of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def cert_to_der(cert: x509.Certificate) -> bytes:
    """DER of a certificate."""
    return cert.public_bytes(serialization.Encoding.DER)


def load_cert(data: bytes) -> x509.Certificate:
    """Parse a certificate from PEM or DER (bounded); raise IdentityError(cert-malformed)."""
    _check_size(data, "cert")
    try:
        with warnings.catch_warnings():
            # Non-conforming certificates (e.g. a negative serial) are refused, not tolerated.
            warnings.simplefilter("error", CryptographyDeprecationWarning)
            cert = _parse_cert(data)
    except (*PARSE_ERRORS, CryptographyDeprecationWarning) as exc:
        raise IdentityError("certificate does not parse", code="cert-malformed") from exc
    return cert


def _parse_cert(data: bytes) -> x509.Certificate:
    if data.lstrip().startswith(b"-----BEGIN"):
        cert = x509.load_pem_x509_certificate(data)
    else:
        cert = x509.load_der_x509_certificate(data)
    # Fields parse lazily: touch them now so a malformed one fails here.
    _ = (cert.version, cert.issuer, cert.subject, cert.extensions, cert.serial_number)
    _ = (cert.public_key(), cert.not_valid_before_utc, cert.not_valid_after_utc)
    return cert


def csr_to_pem(csr: x509.CertificateSigningRequest) -> bytes:
    """PEM of a CSR."""
    return csr.public_bytes(serialization.Encoding.PEM)


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    """Parse a CSR from PEM or DER (bounded); raise IdentityError(csr-malformed)."""
    _check_size(data, "csr")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except ValueError as exc:
        raise IdentityError("CSR does not parse", code="csr-malformed") from exc


def crl_to_pem(crl: x509.CertificateRevocationList) -> bytes:
    """PEM of a CRL."""
    return crl.public_bytes(serialization.Encoding.PEM)


def crl_to_der(crl: x509.CertificateRevocationList) -> bytes:
    """DER of a CRL."""
    return crl.public_bytes(serialization.Encoding.DER)


def load_crl(data: bytes, *, max_size: int = 4 * 1024 * 1024) -> x509.CertificateRevocationList:
    """Parse a CRL from PEM or DER (bounded); raise IdentityError(crl-malformed)."""
    if len(data) > max_size:
        raise IdentityError("CRL is too large", code="crl-malformed")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise IdentityError("CRL does not parse", code="crl-malformed") from exc


def fingerprint(der: bytes) -> str:
    """``sha256:<hex>`` of DER bytes (a certificate's fingerprint)."""
    return "sha256:" + hashlib.sha256(der).hexdigest()
