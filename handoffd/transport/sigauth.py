"""LAN signaling v2: the caller shows account membership, the listener proves it is the device.

Pure (the caller passes ``now``). Both messages are bound to the listener's
ephemeral TLS certificate, which the TLS handshake proves the listener holds:

- hello (caller → listener), msgpack ``{"v": 2, "nonce": <32 bytes>, "mac": <32 bytes>}``
  with ``mac`` = HMAC-SHA256(key = raw account CA public key,
  ``handoff/v2/signaling-hello\\0`` + SHA-256(listener TLS certificate) + nonce).
  Only holders of the CA public key (the account's devices and the server; it
  never crosses the LAN) can make one, so strangers never get a proof, hence
  never the listener's certificate; a hello forwarded by a man in the middle
  names the wrong TLS certificate.
- proof (listener → caller): a signed envelope (``handoffd.envelope``,
  purpose ``signaling-proof``, recipient ``*``: the listener does not know the
  caller) whose payload is msgpack ``[2, nonce, SHA-256(listener TLS certificate)]``.
  The caller checks it against its trust anchor (chain, CRL, signature, time
  window, replay) and the device id it meant to reach, and that the TLS
  certificate it is talking to is the one named: every later byte of the
  session comes from that device's listener. Only then does it send its offer.
"""

from __future__ import annotations

import hashlib
import secrets

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac

from handoffd import envelope, identity
from handoffd.errors import HandoffError, TransportError
from handoffd.identity import TrustAnchor
from handoffd.proto import strict
from handoffd.transport.base import LocalIdentity

VERSION = 2
NONCE_LEN = 32
MAC_LEN = 32
PROOF_PURPOSE = "signaling-proof"
ANY_CALLER = "*"
_HELLO_DOMAIN = b"handoff/v2/signaling-hello\0"
_HELLO_KEYS = ("mac", "nonce", "v")


class SignalingAuthError(TransportError):
    """A hello or a proof failed; never final (an impostor must not end a handoff)."""

    default_code = "signaling-unauthenticated"


def tls_fingerprint(cert_der: bytes) -> bytes:
    """SHA-256 of the listener's TLS certificate (DER)."""
    return hashlib.sha256(cert_der).digest()


def _hello_mac(trust: TrustAnchor, tls_fp: bytes, nonce: bytes) -> hmac.HMAC:
    key = identity.raw_public_key(trust.ca_cert.public_key())  # type: ignore[arg-type]
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(_HELLO_DOMAIN + tls_fp + nonce)
    return mac


def make_hello(trust: TrustAnchor, tls_cert_der: bytes) -> tuple[bytes, bytes]:
    """A hello for the listener presenting ``tls_cert_der``; (body, nonce)."""
    nonce = secrets.token_bytes(NONCE_LEN)
    tag = _hello_mac(trust, tls_fingerprint(tls_cert_der), nonce).finalize()
    body = msgpack.packb({"v": VERSION, "nonce": nonce, "mac": tag}, use_bin_type=True)
    return body, nonce


def _unpack(data: bytes, what: str, code: str) -> object:
    try:
        return strict.unpack(data, max_str=16, max_bin=64, max_array=3, max_map=3)
    except strict.MsgpackError as exc:
        raise SignalingAuthError(f"{what} is not valid msgpack", code=code) from exc


def check_hello(body: bytes, trust: TrustAnchor, tls_cert_der: bytes) -> bytes:
    """Strictly decode and verify a hello; its nonce, or SignalingAuthError.

    Codes: ``hello-malformed``, ``hello-version`` (not v2), ``hello-refused``
    (the MAC is not this account's for this TLS certificate).
    """
    if len(body) > 128:
        raise SignalingAuthError("hello is too large", code="hello-malformed")
    value = _unpack(body, "hello", "hello-malformed")
    if not isinstance(value, dict) or sorted(value) != list(_HELLO_KEYS):
        raise SignalingAuthError("hello must be a map of v, nonce, mac", code="hello-malformed")
    version, nonce, tag = value["v"], value["nonce"], value["mac"]
    if type(version) is not int:
        raise SignalingAuthError("hello version must be an integer", code="hello-malformed")
    if version != VERSION:
        raise SignalingAuthError("unsupported signaling version", code="hello-version")
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_LEN:
        raise SignalingAuthError("hello nonce must be 32 bytes", code="hello-malformed")
    if not isinstance(tag, bytes) or len(tag) != MAC_LEN:
        raise SignalingAuthError("hello mac must be 32 bytes", code="hello-malformed")
    try:
        _hello_mac(trust, tls_fingerprint(tls_cert_der), nonce).verify(tag)
    except InvalidSignature:
        raise SignalingAuthError("hello is not from this account", code="hello-refused") from None
    return nonce


def make_proof(local: LocalIdentity, nonce: bytes, tls_cert_der: bytes, *, now: float) -> bytes:
    """The listener's signed proof for the caller's ``nonce`` on this TLS certificate."""
    payload = msgpack.packb([VERSION, nonce, tls_fingerprint(tls_cert_der)], use_bin_type=True)
    return envelope.seal(
        local.key,
        local.cert_der,
        purpose=PROOF_PURPOSE,
        recipient=ANY_CALLER,
        payload=payload,
        now=now,
    )


def check_proof(
    body: bytes,
    *,
    local: LocalIdentity,
    expected_device: str,
    nonce: bytes,
    tls_cert_der: bytes,
    now: float,
) -> None:
    """Verify the listener's proof; SignalingAuthError (``signaling-unauthenticated``) otherwise.

    The reason (an envelope or certificate code, ``signaling-wrong-device``,
    ``signaling-proof-mismatch``) is in the message, never the code: whatever
    the listener sent, the caller's verdict is the same transient failure.
    """
    try:
        opened = envelope.open_envelope(
            body,
            purpose=PROOF_PURPOSE,
            recipient=ANY_CALLER,
            trust=local.current_trust(),
            now=now,
            replay=local.replay,
        )
    except HandoffError as exc:
        raise SignalingAuthError(f"the listener's proof failed: {exc.code}") from None
    if opened.sender.device_id != expected_device:
        raise SignalingAuthError("the listener is another device: signaling-wrong-device")
    want = msgpack.packb([VERSION, nonce, tls_fingerprint(tls_cert_der)], use_bin_type=True)
    if opened.payload != want:
        raise SignalingAuthError("the listener's proof is not for this session: proof-mismatch")
