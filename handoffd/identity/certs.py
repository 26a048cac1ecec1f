"""The account CA, CSRs and device certificates: making and reading them."""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from handoffd import selfsigned
from handoffd.errors import IdentityError, VerificationError
from handoffd.identity.keys import (
    ACCOUNT_URN,
    BACKDATE,
    CA_LIFETIME,
    CLOCK_SKEW,
    DEVICE_CERT_LIFETIME,
    DEVICE_URN,
    PARSE_ERRORS,
    device_id_for,
    is_account_id,
)

# ---------------------------------------------------------------- the account CA


@dataclass(frozen=True, slots=True)
class AccountCA:
    """An account's CA: its key (server side only) and self-signed certificate."""

    account_id: str
    key: Ed25519PrivateKey
    cert: x509.Certificate


def _ca_name(account_id: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "handoff"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"handoff account {account_id}"),
        ]
    )


def create_account_ca(account_id: str, *, now: dt.datetime) -> AccountCA:
    """A new self-signed account CA (CA:TRUE, pathlen:0, keyCertSign + cRLSign)."""
    if not is_account_id(account_id):
        raise IdentityError(f"bad account id {account_id!r:.60}", code="bad-account-id")
    key = Ed25519PrivateKey.generate()
    name = _ca_name(account_id)
    usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    cert = selfsigned.self_signed(
        key,
        name,
        not_before=now - BACKDATE,
        not_after=now + CA_LIFETIME,
        extensions=[
            (x509.BasicConstraints(ca=True, path_length=0), True),
            (usage, True),
            (
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(ACCOUNT_URN + account_id)]
                ),
                False,
            ),
            (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
        ],
    )
    return AccountCA(account_id=account_id, key=key, cert=cert)


def ca_account_id(ca_cert: x509.Certificate) -> str:
    """The account id named by an account CA certificate."""
    uris = san_uris(ca_cert)
    accounts = [u[len(ACCOUNT_URN) :] for u in uris if u.startswith(ACCOUNT_URN)]
    if len(accounts) != 1 or not is_account_id(accounts[0]):
        raise VerificationError("CA certificate names no account", code="ca-invalid")
    return accounts[0]


def check_account_ca(ca_cert: x509.Certificate, *, now: dt.datetime) -> str:
    """Check that ``ca_cert`` is a valid account CA (self-signed, CA, in date); return its account id."""
    try:
        ca_cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise VerificationError("account CA is not self-signed", code="ca-invalid") from exc
    try:
        bc = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise VerificationError("account CA lacks basic constraints", code="ca-invalid") from None
    if not bc.ca:
        raise VerificationError("account CA is not a CA", code="ca-invalid")
    if (
        now + CLOCK_SKEW < ca_cert.not_valid_before_utc
        or now - CLOCK_SKEW > ca_cert.not_valid_after_utc
    ):
        raise VerificationError("account CA is out of its validity", code="ca-expired")
    return ca_account_id(ca_cert)


# ---------------------------------------------------------------- CSR and device certificates


def make_csr(key: Ed25519PrivateKey) -> x509.CertificateSigningRequest:
    """A CSR for the device key; its signature is the proof of possession."""
    device_id = device_id_for(key.public_key())
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(DEVICE_URN + device_id)]),
            critical=False,
        )
        .sign(key, None)
    )


def check_csr(csr: x509.CertificateSigningRequest) -> str:
    """Check a CSR's proof of possession and key type; return the device id it asks for."""
    try:
        public_key = csr.public_key()
        _ = (csr.subject, csr.extensions)
    except PARSE_ERRORS as exc:
        raise IdentityError("CSR does not parse", code="csr-malformed") from exc
    if not isinstance(public_key, Ed25519PublicKey):
        raise IdentityError("CSR key is not Ed25519", code="csr-bad-key")
    if not csr.is_signature_valid:
        raise IdentityError("CSR signature (proof of possession) is invalid", code="csr-bad-proof")
    return device_id_for(public_key)


def build_device_cert(
    ca: AccountCA,
    public_key: Ed25519PublicKey,
    *,
    device_id: str,
    now: dt.datetime,
    lifetime: dt.timedelta = DEVICE_CERT_LIFETIME,
    serial: int | None = None,
) -> x509.Certificate:
    """Sign a device certificate for ``public_key`` naming ``device_id`` (no checks: see issue_device_cert)."""
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(
            serial if serial is not None else int.from_bytes(secrets.token_bytes(16)) >> 1
        )
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(DEVICE_URN + device_id),
                    x509.UniformResourceIdentifier(ACCOUNT_URN + ca.account_id),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(ca.key, None)
    )


def issue_device_cert(
    ca: AccountCA,
    csr: x509.CertificateSigningRequest,
    *,
    now: dt.datetime,
    lifetime: dt.timedelta = DEVICE_CERT_LIFETIME,
) -> x509.Certificate:
    """Check the CSR and issue a device certificate (random 128-bit serial, 30 days)."""
    device_id = check_csr(csr)
    public_key = csr.public_key()
    if not isinstance(public_key, Ed25519PublicKey):  # pragma: no cover - check_csr ensures it
        raise IdentityError("CSR key is not Ed25519", code="csr-bad-key")
    return build_device_cert(ca, public_key, device_id=device_id, now=now, lifetime=lifetime)


def san_uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    except ValueError:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))
