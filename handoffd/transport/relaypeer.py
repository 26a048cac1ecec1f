"""The relay's check of the peer's TLS certificate (account, device id ↔ key, CRL, expected peer)."""

from __future__ import annotations

import datetime as dt

from handoffd import identity
from handoffd.errors import HandoffError
from handoffd.transport.base import LocalIdentity, PeerAuthError


def verify_peer(
    der: bytes | None, local: LocalIdentity, expected: str | None
) -> identity.PeerIdentity:
    """The verified peer behind certificate ``der``; PeerAuthError (with a stable code) if not."""
    if der is None:
        raise PeerAuthError("peer sent no certificate", code="cert-missing")
    try:
        return identity.verify_device_cert(
            identity.load_cert(der),
            local.current_trust(),
            now=dt.datetime.now(dt.UTC),
            expected_device=expected,
            self_device=local.device_id,
        )
    except HandoffError as exc:
        raise PeerAuthError(exc.message, code=exc.code) from None
