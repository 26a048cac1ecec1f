"""Device keys, the account CA, device certificates, CRLs and their verification.

Pure: no network, no clock reads (callers pass ``now``). The only file I/O is
reading and writing the device's private key, which must stay private. One
module per job, all names re-exported here (``identity.verify_device_cert``):

- ``keys``: ids, device keys, purpose-bound signatures;
- ``pem``: PEM/DER in and out, bounded;
- ``certs``: the account CA, CSRs, device certificates;
- ``crl``: revocation lists;
- ``verify``: a device certificate against the CA and its CRL.
"""

from __future__ import annotations

from handoffd.identity.certs import (
    AccountCA,
    build_device_cert,
    ca_account_id,
    check_account_ca,
    check_csr,
    create_account_ca,
    issue_device_cert,
    make_csr,
    san_uris,
)
from handoffd.identity.crl import (
    Revoked,
    crl_number,
    issue_crl,
    newer_crl,
    verify_crl,
)
from handoffd.identity.keys import (
    ACCOUNT_URN,
    BACKDATE,
    CA_LIFETIME,
    CLOCK_SKEW,
    CRL_LIFETIME,
    DEVICE_CERT_LIFETIME,
    DEVICE_URN,
    MAX_PEM,
    PARSE_ERRORS,
    SIGNATURE_DOMAIN,
    device_id_for,
    format_device_id,
    generate_device_key,
    is_account_id,
    is_device_id,
    load_private_key,
    new_account_id,
    parse_device_id,
    private_key_to_pem,
    raw_public_key,
    save_private_key,
    sign,
    verify_signature,
    write_private_file,
)
from handoffd.identity.pem import (
    cert_to_der,
    cert_to_pem,
    crl_to_der,
    crl_to_pem,
    csr_to_pem,
    fingerprint,
    load_cert,
    load_crl,
    load_csr,
)
from handoffd.identity.verify import (
    PeerIdentity,
    TrustAnchor,
    cert_device_id,
    fingerprint_cert,
    verify_device_cert,
)

__all__ = [
    "ACCOUNT_URN",
    "BACKDATE",
    "CA_LIFETIME",
    "CLOCK_SKEW",
    "CRL_LIFETIME",
    "DEVICE_CERT_LIFETIME",
    "DEVICE_URN",
    "MAX_PEM",
    "PARSE_ERRORS",
    "SIGNATURE_DOMAIN",
    "AccountCA",
    "PeerIdentity",
    "Revoked",
    "TrustAnchor",
    "build_device_cert",
    "ca_account_id",
    "cert_device_id",
    "cert_to_der",
    "cert_to_pem",
    "check_account_ca",
    "check_csr",
    "create_account_ca",
    "crl_number",
    "crl_to_der",
    "crl_to_pem",
    "csr_to_pem",
    "device_id_for",
    "fingerprint",
    "fingerprint_cert",
    "format_device_id",
    "generate_device_key",
    "is_account_id",
    "is_device_id",
    "issue_crl",
    "issue_device_cert",
    "load_cert",
    "load_crl",
    "load_csr",
    "load_private_key",
    "make_csr",
    "new_account_id",
    "newer_crl",
    "parse_device_id",
    "private_key_to_pem",
    "raw_public_key",
    "san_uris",
    "save_private_key",
    "sign",
    "verify_crl",
    "verify_device_cert",
    "verify_signature",
    "write_private_file",
]
