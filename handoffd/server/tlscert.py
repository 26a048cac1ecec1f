"""The server's self-signed TLS certificate: made at first start, pinned by clients by fingerprint.

ECDSA P-256 (browsers do not accept Ed25519 TLS certificates), valid for ten
years: clients pin it by ``sha256:<hex of SHA-256 of the DER>``, so expiry and
names matter only to browsers, which the user accepts once.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from handoffd import identity
from handoffd.errors import ConfigError, HandoffError
from handoffd.selfsigned import self_signed

LIFETIME = dt.timedelta(days=3650)
# TLS 1.2: forward-secret AEAD suites only (no CBC, no RSA key exchange); TLS 1.3's are all AEAD.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
CERT_FILE = "tls/server.crt"
KEY_FILE = "tls/server.key"


@dataclass(frozen=True)
class ServerTLS:
    """Paths of the server's certificate and key, and the certificate's fingerprint."""

    cert_path: Path
    key_path: Path
    fingerprint: str

    def ssl_context(self) -> ssl.SSLContext:
        """A server-side TLS context (TLS 1.3, or 1.2 with ECDHE+AEAD only) with this certificate."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(TLS12_CIPHERS)
        ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
        ctx.load_cert_chain(self.cert_path, self.key_path)
        return ctx


def _names(extra_hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    hostname = socket.gethostname()
    hosts = [hostname, *extra_hosts] if hostname and hostname != "localhost" else extra_hosts
    for host in hosts:
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a wildcard is not a name
            continue
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if host and host.isascii():
                names.append(x509.DNSName(host))
    unique: list[x509.GeneralName] = []
    for name in names:
        if name not in unique:
            unique.append(name)
    return unique


def make_certificate(
    *, now: dt.datetime, extra_hosts: list[str] | None = None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new P-256 key and a self-signed server certificate for it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "handoff"),
            x509.NameAttribute(NameOID.COMMON_NAME, "handoff-server"),
        ]
    )
    cert = self_signed(
        key,
        name,
        not_before=now - identity.BACKDATE,
        not_after=now + LIFETIME,
        extensions=[
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.SubjectAlternativeName(_names(extra_hosts or [])), False),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        ],
    )
    return key, cert


def load_or_create(
    data_dir: Path, *, now: dt.datetime, extra_hosts: list[str] | None = None
) -> ServerTLS:
    """The data dir's TLS certificate, made (key 0600) if there is none yet."""
    cert_path, key_path = data_dir / CERT_FILE, data_dir / KEY_FILE
    if not cert_path.exists() or not key_path.exists():
        key, cert = make_certificate(now=now, extra_hosts=extra_hosts)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        cert_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        identity.write_private_file(key_path, key_pem)
        cert_path.write_bytes(identity.cert_to_pem(cert))
    return ServerTLS(cert_path=cert_path, key_path=key_path, fingerprint=read_fingerprint(data_dir))


def read_fingerprint(data_dir: Path) -> str:
    """``sha256:<hex>`` of the data dir's TLS certificate (for the CLI's invite URLs)."""
    cert_path = data_dir / CERT_FILE
    try:
        cert = identity.load_cert(cert_path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(
            f"no TLS certificate at {cert_path}: run `handoff-server serve` once",
            code="tls-cert-missing",
        ) from None
    except HandoffError as exc:
        raise ConfigError(f"{cert_path} is not a certificate", code="tls-cert-invalid") from exc
    return identity.fingerprint_cert(cert)
