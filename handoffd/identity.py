"""Device keys, the account CA, device certificates, CRLs and their verification.

Pure: no network, no clock reads (callers pass ``now``). The only file I/O is
reading and writing the device's private key, which must stay private.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import secrets
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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
_PARSE_ERRORS = (
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
    except (*_PARSE_ERRORS, CryptographyDeprecationWarning) as exc:
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
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(ACCOUNT_URN + account_id)]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, None)
    )
    return AccountCA(account_id=account_id, key=key, cert=cert)


def ca_account_id(ca_cert: x509.Certificate) -> str:
    """The account id named by an account CA certificate."""
    uris = _san_uris(ca_cert)
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
    except _PARSE_ERRORS as exc:
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


def _san_uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    except ValueError:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def cert_device_id(cert: x509.Certificate) -> str | None:
    """The device id in a certificate's SAN, if exactly one; None otherwise."""
    ids = [u[len(DEVICE_URN) :] for u in _san_uris(cert) if u.startswith(DEVICE_URN)]
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
    except _PARSE_ERRORS as exc:  # cryptography parses fields lazily
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
    uris = _san_uris(cert)
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
