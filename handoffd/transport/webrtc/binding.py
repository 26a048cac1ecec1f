"""The identity binding of a WebRTC connection (pure): strict SDP and offer/answer payloads,
and the confirmations each side signs over both nonces, ids, DTLS fingerprints and exporter."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import msgpack
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from handoffd import envelope, identity
from handoffd.errors import VerificationError
from handoffd.transport.base import PeerAuthError

PURPOSE_OFFER = "webrtc-offer"
PURPOSE_ANSWER = "webrtc-answer"
PURPOSE_CONFIRM = "webrtc-confirm"
# RFC 5705: labels outside the IANA registry start with "EXPERIMENTAL".
EXPORTER_LABEL = b"EXPERIMENTAL-handoff-v1-webrtc-binding"
EXPORTER_LEN = 32
MAX_SDP = 32 * 1024
MAX_CONFIRM = 1024
MAX_FINGERPRINTS = 8
ROLE_OFFERER = "offerer"
ROLE_ANSWERER = "answerer"
BIND_FINGERPRINT = "dtls-fingerprint"
"""A description's ``bind``: the confirmations sign an empty exporter (a browser cannot read the
DTLS exporter; the signed, checked fingerprints bind the session; docs/protocol.md)."""
_VERSION = 1
# Digest sizes of the algorithms aiortc offers and checks.
_FP_ALGORITHMS = {"sha-256": 32, "sha-384": 48, "sha-512": 64}
_HEX = frozenset("0123456789ABCDEF")

Fingerprint = tuple[str, str]


def _check_fingerprint(alg: object, value: object) -> Fingerprint:
    if not isinstance(alg, str) or not isinstance(value, str) or alg not in _FP_ALGORITHMS:
        raise PeerAuthError("unsupported DTLS fingerprint algorithm", code="sdp-invalid")
    parts = value.split(":")
    if len(parts) != _FP_ALGORITHMS[alg] or not all(len(p) == 2 and set(p) <= _HEX for p in parts):
        raise PeerAuthError("malformed DTLS fingerprint", code="sdp-invalid")
    return alg, value


def sdp_fingerprints(sdp: str) -> list[Fingerprint]:
    """Parse an SDP strictly (one data channel m-section) and return its ``a=fingerprint`` values."""
    if len(sdp) > MAX_SDP or not sdp.isascii():
        raise PeerAuthError("SDP is too large or not ASCII", code="sdp-invalid")
    if not sdp.endswith("\r\n"):
        raise PeerAuthError("SDP must end with CRLF", code="sdp-invalid")
    lines = sdp[:-2].split("\r\n")
    if lines[0] != "v=0":
        raise PeerAuthError("SDP must start with v=0", code="sdp-invalid")
    found: list[Fingerprint] = []
    media = 0
    for line in lines:
        if len(line) < 2 or line[1] != "=" or not ("a" <= line[0] <= "z"):
            raise PeerAuthError("SDP line is malformed", code="sdp-invalid")
        if not line.isprintable():
            raise PeerAuthError("SDP line has control characters", code="sdp-invalid")
        if line.startswith("m="):
            media += 1
            if not (
                line.startswith("m=application ")
                and line.endswith(" UDP/DTLS/SCTP webrtc-datachannel")
            ):
                raise PeerAuthError(
                    "SDP offers something other than a data channel", code="sdp-invalid"
                )
        elif line.startswith("a=fingerprint:"):
            fields = line[len("a=fingerprint:") :].split(" ")
            if len(fields) != 2:
                raise PeerAuthError("SDP fingerprint line is malformed", code="sdp-invalid")
            found.append(_check_fingerprint(fields[0], fields[1]))
    if media != 1:
        raise PeerAuthError("SDP must have exactly one m-section", code="sdp-invalid")
    return found


def check_sdp(sdp: str, signed: list[Fingerprint]) -> None:
    """Raise PeerAuthError unless the SDP's fingerprints are exactly the signed ones."""
    in_sdp = sdp_fingerprints(sdp)
    if not in_sdp or set(in_sdp) != set(signed):
        raise PeerAuthError(
            "SDP fingerprints differ from the signed ones", code="sdp-fingerprint-mismatch"
        )


def sha256_of(fps: list[Fingerprint]) -> str:
    """The sha-256 value among checked fingerprints (``Description.unpack`` requires one)."""
    return next(v for a, v in fps if a == "sha-256")


def _unpack(data: bytes, *, max_str: int, what: str) -> Any:
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_bin_len=64,
            max_str_len=max_str,
            max_array_len=MAX_FINGERPRINTS,
            max_map_len=8,
            max_ext_len=0,
        )
    except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException) as exc:
        raise PeerAuthError(f"{what} is not valid msgpack", code=f"{what}-malformed") from exc


@dataclass(frozen=True)
class Description:
    """A signed offer or answer payload."""

    cid: bytes
    sdp: str
    fingerprints: list[Fingerprint]
    offer_nonce: bytes | None = None
    bind: str | None = None

    @property
    def uses_exporter(self) -> bool:
        """False when this side asks for the fingerprint-only binding (``BIND_FINGERPRINT``)."""
        return self.bind is None

    def pack(self) -> bytes:
        """msgpack of the payload (offer_nonce only in answers; bind only when set)."""
        body: dict[str, Any] = {
            "v": _VERSION,
            "cid": self.cid,
            "sdp": self.sdp,
            "fp": [list(f) for f in self.fingerprints],
        }
        if self.offer_nonce is not None:
            body["offer_nonce"] = self.offer_nonce
        if self.bind is not None:
            body["bind"] = self.bind
        return msgpack.packb(body, use_bin_type=True)

    @classmethod
    def unpack(cls, data: bytes, *, answer: bool) -> Description:
        """Strictly decode an offer (answer=False) or answer payload."""
        what = "answer" if answer else "offer"
        body = _unpack(data, max_str=MAX_SDP, what=what)
        keys = {"v", "cid", "sdp", "fp"} | ({"offer_nonce"} if answer else set())
        if not isinstance(body, dict) or set(body) - {"bind"} != keys or body["v"] != _VERSION:
            raise PeerAuthError(f"{what} has the wrong fields", code=f"{what}-malformed")
        bind = body.get("bind")
        if "bind" in body and bind != BIND_FINGERPRINT:
            raise PeerAuthError(f"{what} asks for an unknown binding", code=f"{what}-malformed")
        cid, sdp, fps = body["cid"], body["sdp"], body["fp"]
        nonce = body.get("offer_nonce")
        if not (
            isinstance(cid, bytes)
            and len(cid) == 16
            and isinstance(sdp, str)
            and isinstance(fps, list)
            and 0 < len(fps) <= MAX_FINGERPRINTS
            and (not answer or (isinstance(nonce, bytes) and len(nonce) == envelope.NONCE_LEN))
        ):
            raise PeerAuthError(f"{what} has a field of the wrong type", code=f"{what}-malformed")
        checked: list[Fingerprint] = []
        for f in fps:
            if not isinstance(f, list) or len(f) != 2:
                raise PeerAuthError(f"{what} fingerprint is malformed", code=f"{what}-malformed")
            checked.append(_check_fingerprint(f[0], f[1]))
        if len(set(checked)) != len(checked) or "sha-256" not in {a for a, _ in checked}:
            raise PeerAuthError(f"{what} fingerprints are invalid", code=f"{what}-malformed")
        return cls(cid=cid, sdp=sdp, fingerprints=checked, offer_nonce=nonce, bind=bind)


@dataclass(frozen=True)
class Binding:
    """What both confirmations sign: this connection, both identities, both DTLS endpoints."""

    cid: bytes
    offer_nonce: bytes
    answer_nonce: bytes
    offerer: str
    answerer: str
    offerer_fp: str
    answerer_fp: str

    def signed_bytes(self, role: str, exporter: bytes) -> bytes:
        """The bytes a side with ``role`` signs (the role stops reflection of our own message)."""
        return msgpack.packb(
            [
                role,
                self.cid,
                self.offer_nonce,
                self.answer_nonce,
                self.offerer,
                self.answerer,
                self.offerer_fp,
                self.answerer_fp,
                exporter,
            ],
            use_bin_type=True,
        )


def make_confirm(binding: Binding, role: str, key: Ed25519PrivateKey, exporter: bytes) -> bytes:
    """Our confirmation message: role, the fingerprints as we see them, our signature."""
    sig = identity.sign(key, PURPOSE_CONFIRM, binding.signed_bytes(role, exporter))
    return msgpack.packb(
        {"role": role, "fp": [binding.offerer_fp, binding.answerer_fp], "sig": sig},
        use_bin_type=True,
    )


def check_confirm(
    data: bytes, binding: Binding, peer_role: str, peer_key: Ed25519PublicKey, exporter: bytes
) -> None:
    """Raise PeerAuthError unless ``data`` is the peer's valid confirmation of ``binding``."""
    if len(data) > MAX_CONFIRM:
        raise PeerAuthError("confirmation is too large", code="confirm-malformed")
    body = _unpack(data, max_str=256, what="confirm")
    if not isinstance(body, dict) or set(body) != {"role", "fp", "sig"}:
        raise PeerAuthError("confirmation has the wrong fields", code="confirm-malformed")
    role, fps, sig = body["role"], body["fp"], body["sig"]
    if not isinstance(sig, bytes) or not isinstance(fps, list) or len(fps) != 2:
        raise PeerAuthError("confirmation has the wrong types", code="confirm-malformed")
    if role != peer_role:
        raise PeerAuthError("confirmation is from the wrong role", code="confirm-wrong-role")
    if fps != [binding.offerer_fp, binding.answerer_fp]:
        raise PeerAuthError(
            "peer sees other DTLS fingerprints (man in the middle?)",
            code="dtls-fingerprint-mismatch",
        )
    try:
        identity.verify_signature(
            peer_key, PURPOSE_CONFIRM, binding.signed_bytes(peer_role, exporter), sig
        )
    except VerificationError as exc:
        raise PeerAuthError(
            "confirmation signature does not verify for this DTLS session",
            code="confirm-bad-signature",
        ) from exc


def cert_fp(cert: x509.Certificate) -> str:
    """A certificate's sha-256 fingerprint as SDP writes it (colon-separated upper hex)."""
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))
