"""Device request signatures, the WebSocket challenge, replay protection: both halves.

Pure (no I/O, no clock reads: callers pass ``now``); the device imports the
signing half, the server the verifying half, so both agree by construction.

HTTP request signature (purpose ``server-request``), sent in four headers::

    X-Handoff-Device:    <device id>
    X-Handoff-Timestamp: <Unix time in milliseconds>
    X-Handoff-Nonce:     <16 random bytes, base64url without padding>
    X-Handoff-Signature: <Ed25519 signature, base64url without padding>

over ``METHOD \\n PATH?QUERY \\n hex(SHA-256(body)) \\n timestamp \\n nonce \\n device``
under the domain ``handoff/v1/server-request``. The server accepts a timestamp
within ±60 s of its clock and each (device, nonce) once.

WebSocket challenge (purpose ``server-ws-auth``), on ``/v1/ws`` and ``/v1/relay``::

    server → device: {"type": "challenge", "nonce": <32 bytes, base64url>, "server_time": <s>}
    device → server: {"type": "auth", "device_id": <id>, "signature": <base64url>, ...}

the device signs ``nonce \\n device``; ``/v1/relay``'s answer also carries
``session`` and ``token``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from handoffd import identity
from handoffd.envelope import ReplayCache
from handoffd.errors import HandoffError, ServerError

REQUEST_PURPOSE = "server-request"
WS_PURPOSE = "server-ws-auth"
H_DEVICE = "X-Handoff-Device"
H_TIMESTAMP = "X-Handoff-Timestamp"
H_NONCE = "X-Handoff-Nonce"
H_SIGNATURE = "X-Handoff-Signature"
REQUEST_WINDOW = 60.0
NONCE_LEN = 16
WS_NONCE_LEN = 32


def b64e(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def b64d(text: str, *, max_len: int = 1024) -> bytes:
    """Strict base64url (padding optional); raise ValueError if malformed or too long."""
    if len(text) > max_len * 4 // 3 + 4 or not text.isascii():
        raise ValueError("base64 text too long or not ASCII")
    padded = text + "=" * (-len(text) % 4)
    try:
        data = base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True)
    except binascii.Error as exc:
        raise ValueError("malformed base64") from exc
    if len(data) > max_len:
        raise ValueError("base64 payload too long")
    return data


def request_bytes(
    method: str, path_qs: str, body: bytes, timestamp_ms: int, nonce: str, device_id: str
) -> bytes:
    """The canonical bytes a device signs for one HTTP request."""
    return "\n".join(
        [
            method.upper(),
            path_qs,
            hashlib.sha256(body).hexdigest(),
            str(timestamp_ms),
            nonce,
            device_id,
        ]
    ).encode("utf-8")


def sign_request(
    key: Ed25519PrivateKey, method: str, path_qs: str, body: bytes, *, now: float
) -> dict[str, str]:
    """The four signature headers for one request made with ``key``."""
    device_id = identity.device_id_for(key.public_key())
    timestamp_ms = int(now * 1000)
    nonce = b64e(secrets.token_bytes(NONCE_LEN))
    sig = identity.sign(
        key,
        REQUEST_PURPOSE,
        request_bytes(method, path_qs, body, timestamp_ms, nonce, device_id),
    )
    return {
        H_DEVICE: device_id,
        H_TIMESTAMP: str(timestamp_ms),
        H_NONCE: nonce,
        H_SIGNATURE: b64e(sig),
    }


def ws_auth_bytes(challenge: bytes, device_id: str) -> bytes:
    """The canonical bytes a device signs to answer a WebSocket challenge."""
    return challenge + b"\n" + device_id.encode("ascii")


def sign_ws_challenge(key: Ed25519PrivateKey, challenge: bytes) -> str:
    """The base64url signature answering the server's WebSocket challenge."""
    device_id = identity.device_id_for(key.public_key())
    return b64e(identity.sign(key, WS_PURPOSE, ws_auth_bytes(challenge, device_id)))


def _auth_error(message: str, code: str, status: int = 401) -> ServerError:
    return ServerError(message, code=code, status=status)


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """The parsed signature headers of a request (not yet verified)."""

    device_id: str
    timestamp_ms: int
    nonce: str
    signature: bytes


def parse_signature_headers(headers: Mapping[str, str]) -> SignedRequest:
    """Parse the four headers strictly; raise ServerError(auth-missing / auth-malformed)."""
    values = [headers.get(h) for h in (H_DEVICE, H_TIMESTAMP, H_NONCE, H_SIGNATURE)]
    if any(v is None for v in values):
        raise _auth_error("request is not signed by a device", "auth-missing")
    device_id, ts_text, nonce, sig_text = (v or "" for v in values)
    if not identity.is_device_id(device_id):
        raise _auth_error("malformed device id header", "auth-malformed")
    if not (ts_text.isascii() and ts_text.isdigit() and len(ts_text) <= 16):
        raise _auth_error("malformed timestamp header", "auth-malformed")
    try:
        if len(b64d(nonce, max_len=64)) != NONCE_LEN:
            raise ValueError("nonce length")
        signature = b64d(sig_text, max_len=64)
    except ValueError:
        raise _auth_error("malformed nonce or signature header", "auth-malformed") from None
    return SignedRequest(device_id, int(ts_text), nonce, signature)


class RequestVerifier:
    """Checks request signatures against device keys, with a ±60 s window and a nonce cache."""

    def __init__(self, *, window: float = REQUEST_WINDOW, max_nonces: int = 200_000) -> None:
        self._window = window
        self._replay = ReplayCache(max_entries=max_nonces)

    def verify(
        self,
        signed: SignedRequest,
        public_key: Ed25519PublicKey,
        *,
        method: str,
        path_qs: str,
        body: bytes,
        now: float,
    ) -> None:
        """Raise ServerError (auth-invalid / auth-stale / auth-replayed) unless the request is fresh and signed."""
        data = request_bytes(
            method, path_qs, body, signed.timestamp_ms, signed.nonce, signed.device_id
        )
        try:
            identity.verify_signature(public_key, REQUEST_PURPOSE, data, signed.signature)
        except HandoffError:
            raise _auth_error("request signature does not verify", "auth-invalid") from None
        # Time and replay are checked only after the signature, so forgeries cannot fill the cache.
        stamp = signed.timestamp_ms / 1000
        if abs(now - stamp) > self._window:
            raise _auth_error("request timestamp is outside the allowed window", "auth-stale")
        try:
            self._replay.check_and_add(
                signed.device_id, signed.nonce.encode("ascii"), stamp + self._window, now
            )
        except HandoffError as exc:
            if exc.code == "envelope-replayed":
                raise _auth_error("request was already used (replay)", "auth-replayed") from None
            raise _auth_error("too many requests in flight", "auth-busy", 503) from None


def verify_ws_answer(
    public_key: Ed25519PublicKey, challenge: bytes, device_id: str, signature_b64: str
) -> None:
    """Raise ServerError(auth-invalid) unless the answer signs the challenge for ``device_id``."""
    try:
        sig = b64d(signature_b64, max_len=64)
        identity.verify_signature(public_key, WS_PURPOSE, ws_auth_bytes(challenge, device_id), sig)
    except (ValueError, HandoffError):
        raise _auth_error("challenge signature does not verify", "auth-invalid") from None


# ---------------------------------------------------------------- the challenge messages


def new_challenge() -> bytes:
    """A fresh 32-byte WebSocket challenge (the server's)."""
    return secrets.token_bytes(WS_NONCE_LEN)


def challenge_message(challenge: bytes, server_time: float) -> dict[str, Any]:
    """The server's first WebSocket message."""
    return {"type": "challenge", "nonce": b64e(challenge), "server_time": server_time}


def parse_challenge(message: Mapping[str, Any]) -> bytes:
    """The nonce of the server's challenge message; ValueError if it is not one."""
    nonce = message.get("nonce")
    if message.get("type") != "challenge" or not isinstance(nonce, str):
        raise ValueError("not a challenge")
    challenge = b64d(nonce, max_len=64)
    if not challenge:
        raise ValueError("empty challenge")
    return challenge


def auth_message(key: Ed25519PrivateKey, challenge: bytes, **extra: str) -> dict[str, str]:
    """The device's answer to ``challenge`` (``extra``: the relay's session and token)."""
    return {
        "type": "auth",
        "device_id": identity.device_id_for(key.public_key()),
        "signature": sign_ws_challenge(key, challenge),
        **extra,
    }


def parse_auth(message: Mapping[str, Any]) -> tuple[str, str]:
    """The device id and signature of an ``auth`` answer; ValueError saying what is wrong."""
    if message.get("type") != "auth":
        raise ValueError("the first message must be auth")
    device_id, signature = message.get("device_id"), message.get("signature")
    if not isinstance(device_id, str) or not identity.is_device_id(device_id):
        raise ValueError("auth needs a device_id")
    if not isinstance(signature, str):
        raise ValueError("auth needs a signature")
    return device_id, signature
