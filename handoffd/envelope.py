"""Signed envelopes between two devices of one account, and the replay cache.

Pure: the caller passes ``now`` (Unix seconds). An envelope binds a purpose
(domain separation), the sender's certificate, the recipient's device id, a
128-bit nonce and a lifetime of at most 60 s to an opaque payload.

Wire form (msgpack): ``{"body": <bytes>, "cert": <sender cert DER>, "sig": <bytes>}``
with ``body`` = msgpack array ``[context, sender, recipient, nonce, issued_ms,
expires_ms, payload]`` and ``sig`` = Ed25519 over ``handoff/v1/envelope\\0`` + body.
"""

from __future__ import annotations

import datetime as dt
import heapq
import secrets
from dataclasses import dataclass
from typing import Any

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from handoffd import identity
from handoffd.errors import EnvelopeError, HandoffError
from handoffd.identity import PeerIdentity, TrustAnchor
from handoffd.proto import strict

MAX_LIFETIME = 60.0
DEFAULT_LIFETIME = 30.0
CLOCK_SKEW = 30.0
MAX_ENVELOPE = 256 * 1024
NONCE_LEN = 16
_SIG_PURPOSE = "envelope"
_KEYS = ("body", "cert", "sig")


@dataclass(frozen=True, slots=True)
class Opened:
    """A verified envelope: who sent it, and what."""

    sender: PeerIdentity
    payload: bytes
    nonce: bytes
    issued_at: float
    expires_at: float


def context_for(purpose: str) -> str:
    """The domain-separation string of an envelope purpose."""
    return f"handoff/v1/{purpose}"


def seal(
    key: Ed25519PrivateKey,
    cert_der: bytes,
    *,
    purpose: str,
    recipient: str,
    payload: bytes,
    now: float,
    lifetime: float = DEFAULT_LIFETIME,
    nonce: bytes | None = None,
) -> bytes:
    """Sign ``payload`` for ``recipient`` under ``purpose``; return the envelope bytes."""
    if not 0 < lifetime <= MAX_LIFETIME:
        raise ValueError("envelope lifetime must be in (0, 60] seconds")
    nonce = nonce if nonce is not None else secrets.token_bytes(NONCE_LEN)
    if len(nonce) != NONCE_LEN:
        raise ValueError("nonce must be 16 bytes")
    sender = identity.device_id_for(key.public_key())
    issued_ms = int(now * 1000)
    body = msgpack.packb(
        [
            context_for(purpose),
            sender,
            recipient,
            nonce,
            issued_ms,
            issued_ms + int(lifetime * 1000),
            payload,
        ],
        use_bin_type=True,
    )
    sig = identity.sign(key, _SIG_PURPOSE, body)
    return msgpack.packb({"body": body, "cert": cert_der, "sig": sig}, use_bin_type=True)


def _unpack(data: bytes, what: str) -> Any:
    try:
        return strict.unpack(data, max_str=4096, max_bin=MAX_ENVELOPE, max_array=16, max_map=8)
    except strict.MsgpackError as exc:
        raise EnvelopeError(f"{what} is not valid msgpack", code="envelope-malformed") from exc


def _bad(message: str) -> EnvelopeError:
    return EnvelopeError(message, code="envelope-malformed")


def open_envelope(
    data: bytes,
    *,
    purpose: str,
    recipient: str,
    trust: TrustAnchor,
    now: float,
    replay: ReplayCache,
) -> Opened:
    """Verify an envelope addressed to ``recipient``; each rejection has its own code.

    Order matters: nothing unauthenticated reaches the replay cache, so forged
    envelopes cannot fill it.
    """
    if len(data) > MAX_ENVELOPE:
        raise EnvelopeError("envelope is too large", code="envelope-oversize")
    outer = _unpack(data, "envelope")
    if not isinstance(outer, dict) or sorted(outer) != list(_KEYS):
        raise _bad("envelope must be a map of body, cert, sig")
    body, cert_der, sig = outer["body"], outer["cert"], outer["sig"]
    if not all(isinstance(x, bytes) for x in (body, cert_der, sig)):
        raise _bad("envelope fields must be bytes")
    fields = _unpack(body, "envelope body")
    if not isinstance(fields, list) or len(fields) != 7:
        raise _bad("envelope body must be an array of 7")
    context, sender, to, nonce, issued_ms, expires_ms, payload = fields
    if not (
        isinstance(context, str)
        and isinstance(sender, str)
        and isinstance(to, str)
        and isinstance(nonce, bytes)
        and type(issued_ms) is int
        and type(expires_ms) is int
        and isinstance(payload, bytes)
    ):
        raise _bad("envelope body has a field of the wrong type")
    if len(nonce) != NONCE_LEN:
        raise _bad("envelope nonce must be 16 bytes")
    if context != context_for(purpose):
        raise EnvelopeError(
            f"envelope is for {context!r:.80}, not {context_for(purpose)}",
            code="envelope-wrong-context",
        )
    try:
        cert = identity.load_cert(cert_der)
    except HandoffError as exc:
        raise _bad("envelope certificate does not parse") from exc
    peer = identity.verify_device_cert(
        cert, trust, now=dt.datetime.fromtimestamp(now, dt.UTC), self_device=None
    )
    if peer.device_id != sender:
        raise EnvelopeError(
            "envelope sender is not its certificate", code="envelope-sender-mismatch"
        )
    public_key = cert.public_key()
    if not isinstance(public_key, Ed25519PublicKey):  # pragma: no cover - verified above
        raise _bad("sender key is not Ed25519")
    try:
        identity.verify_signature(public_key, _SIG_PURPOSE, body, sig)
    except HandoffError as exc:
        raise EnvelopeError("envelope signature is invalid", code="envelope-bad-signature") from exc
    if to != recipient:
        raise EnvelopeError(
            "envelope is addressed to another device", code="envelope-wrong-recipient"
        )
    issued, expires = issued_ms / 1000, expires_ms / 1000
    if not 0 < expires - issued <= MAX_LIFETIME:
        raise EnvelopeError("envelope lifetime exceeds 60 s", code="envelope-lifetime")
    if issued > now + CLOCK_SKEW:
        raise EnvelopeError("envelope is issued in the future", code="envelope-not-yet-valid")
    if now > expires + CLOCK_SKEW:
        raise EnvelopeError("envelope has expired", code="envelope-expired")
    replay.check_and_add(sender, nonce, expires + CLOCK_SKEW, now)
    return Opened(sender=peer, payload=payload, nonce=nonce, issued_at=issued, expires_at=expires)


class ReplayCache:
    """Remembers nonces until their envelopes expire; bounded, and fails closed when full."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._max = max_entries
        self._seen: set[tuple[str, bytes]] = set()
        self._expiry: list[tuple[float, str, bytes]] = []

    def __len__(self) -> int:
        return len(self._seen)

    def _purge(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] < now:
            _, sender, nonce = heapq.heappop(self._expiry)
            self._seen.discard((sender, nonce))

    def check_and_add(self, sender: str, nonce: bytes, forget_after: float, now: float) -> None:
        """Record the nonce; raise EnvelopeError(envelope-replayed) if seen before."""
        self._purge(now)
        entry = (sender, nonce)
        if entry in self._seen:
            raise EnvelopeError("envelope was already used (replay)", code="envelope-replayed")
        if len(self._seen) >= self._max:
            raise EnvelopeError("too many envelopes in flight", code="envelope-replay-cache-full")
        self._seen.add(entry)
        heapq.heappush(self._expiry, (forget_after, sender, nonce))
