"""What the server's account answers give a device, each checked before it is returned (no I/O).

Join and renewal results are verified as certificates (account CA, device id
↔ key, CRL) before the device keeps them; every other answer is checked field
by field. Anything wrong is ``ServerError(code="server-bad-response")``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from handoffd import identity
from handoffd.errors import HandoffError, ServerError
from handoffd.serverlink.http import field, pem_field
from handoffd.wire.ice import check_ice_response
from handoffd.wire.invite import parse_invite
from handoffd.wire.messages import bad_response

__all__ = [
    "CreatedInvite",
    "DeviceRecord",
    "IceServerInfo",
    "JoinResult",
    "cert_account",
    "check_join",
    "check_renewal",
    "created_invite",
    "device_record",
    "ice_servers",
]


@dataclass(frozen=True)
class JoinResult:
    """What a successful join gives the new device."""

    device_id: str
    account_id: str
    device_cert: x509.Certificate
    account_ca: x509.Certificate
    crl: x509.CertificateRevocationList
    account_name: str | None = None


@dataclass(frozen=True)
class CreatedInvite:
    """An invite made by this device: URL (for the QR), short code, expiry (Unix s), QR as SVG."""

    url: str
    code: str
    expires_at: float
    qr_svg: str
    page_url: str | None = None
    """The browser pairing page (``<server>/pair#token=…``) for the same invite, if the server
    gives one (docs/browser.md): what the QR code holds then."""


@dataclass(frozen=True)
class DeviceRecord:
    """One device of the account as the server knows it."""

    device_id: str
    name: str
    platform: str
    revoked: bool
    created_at: float
    last_seen: float | None
    online: bool


@dataclass(frozen=True)
class IceServerInfo:
    """A STUN or TURN server the server advertises (TURN: time-limited credentials)."""

    urls: tuple[str, ...]
    username: str | None
    credential: str | None


def check_join(result: Any, key: Ed25519PrivateKey, *, now: dt.datetime) -> JoinResult:
    """The join answer for ``key``, its certificates verified (account CA, own id, CRL)."""
    try:
        cert = identity.load_cert(pem_field(result, "device_cert"))
        ca = identity.load_cert(pem_field(result, "account_ca"))
        crl = identity.load_crl(pem_field(result, "crl"))
    except HandoffError as exc:
        raise bad_response(f"join result ({exc.code})") from None
    account_id = identity.check_account_ca(ca, now=now)
    trust = identity.TrustAnchor.from_ca(ca, crl)
    own_id = identity.device_id_for(key.public_key())
    peer = identity.verify_device_cert(cert, trust, now=now, expected_device=own_id)
    if field(result, "device_id", str) != own_id or field(result, "account_id", str) != (
        account_id
    ):
        raise bad_response("join result (ids)")
    name = result.get("account_name")
    return JoinResult(
        device_id=peer.device_id,
        account_id=account_id,
        device_cert=cert,
        account_ca=ca,
        crl=crl,
        account_name=name if isinstance(name, str) and 0 < len(name) <= 128 else None,
    )


def check_renewal(
    result: Any, key: Ed25519PrivateKey, old: x509.Certificate, *, now: dt.datetime
) -> x509.Certificate:
    """The renewed certificate for ``key``, issued by the same account as ``old``."""
    try:
        cert = identity.load_cert(pem_field(result, "device_cert"))
        ca = identity.load_cert(pem_field(result, "account_ca"))
    except HandoffError as exc:
        raise bad_response(f"renew result ({exc.code})") from None
    if ca.subject != old.issuer:
        raise bad_response("renew result (another account)")
    identity.verify_device_cert(
        cert,
        identity.TrustAnchor.from_ca(ca),
        now=now,
        expected_device=identity.device_id_for(key.public_key()),
    )
    return cert


def created_invite(result: Any) -> CreatedInvite:
    """The answer of ``POST /v1/invites``."""
    expires = field(result, "expires_at", (int, float))
    url = field(result, "url", str)
    return CreatedInvite(
        url=url,
        code=field(result, "code", str),
        expires_at=float(expires),
        qr_svg=field(result, "qr_svg", str),
        page_url=_page_url(result, url),
    )


def _page_url(result: Any, url: str) -> str | None:
    """The invite's browser page URL: only one for the same server and token as ``url``."""
    page = result.get("page_url") if isinstance(result, dict) else None
    if not isinstance(page, str):
        return None
    try:
        same = parse_invite(page) == parse_invite(url)
    except HandoffError:
        return None
    return page if same else None


def device_record(item: Any) -> DeviceRecord:
    """One entry of ``GET /v1/devices``."""
    last_seen = item.get("last_seen") if isinstance(item, dict) else None
    if last_seen is not None and not isinstance(last_seen, (int, float)):
        raise bad_response("device record")
    return DeviceRecord(
        device_id=field(item, "device_id", str),
        name=field(item, "name", str),
        platform=field(item, "platform", str),
        revoked=field(item, "revoked", bool),
        created_at=float(field(item, "created_at", (int, float))),
        last_seen=None if last_seen is None else float(last_seen),
        online=field(item, "online", bool),
    )


def ice_servers(result: Any, *, asked_at: float) -> tuple[tuple[IceServerInfo, ...], float]:
    """The checked ``/v1/ice`` answer and when its credentials expire (``asked_at`` + TTL)."""
    try:
        entries, ttl = check_ice_response(result)
    except ValueError as exc:
        raise bad_response(f"ICE server list ({exc})") from None
    servers = tuple(IceServerInfo(e.urls, e.username, e.credential) for e in entries)
    return servers, asked_at + ttl


def cert_account(cert: x509.Certificate) -> str:
    """The account id a device certificate names; ``not-paired`` if none."""
    try:
        return identity.ca_account_id(cert)  # reads the one account URN, of any certificate
    except HandoffError:
        raise ServerError("device certificate names no account", code="not-paired") from None
