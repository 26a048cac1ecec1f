"""WebRTC data channels (aiortc) bound to device identities; the only module importing aiortc.

aiortc makes a fresh self-signed DTLS certificate per connection, so identity
is bound in three steps (docs/transport.md has the whole argument):

1. The offer and the answer travel as envelopes signed by the device keys
   (``webrtc-offer`` / ``webrtc-answer``); each payload lists the sender's DTLS
   fingerprints, and every ``a=fingerprint`` of the SDP must be one of them.
2. aiortc's DTLS handshake checks the peer's certificate against the remote
   SDP's fingerprints (``RTCDtlsTransport._validate_peer_identity``); we check
   the negotiated peer certificate again ourselves.
3. Before any application byte, each side sends a confirmation signed by its
   device key over both nonces, both device ids, both DTLS fingerprints and a
   DTLS keying-material exporter value (RFC 5705), so both ends prove they
   hold the device key *and* terminate this very DTLS session.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgpack
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidAccessError, InvalidStateError
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from handoffd import envelope, identity
from handoffd.errors import TransportError, VerificationError
from handoffd.transport.base import (
    MAX_MESSAGE,
    PATH_DIRECT,
    Channel,
    Dialer,
    LocalIdentity,
    PeerAuthError,
    check_message,
)

log = logging.getLogger("handoffd.transport")

PURPOSE_OFFER = "webrtc-offer"
PURPOSE_ANSWER = "webrtc-answer"
PURPOSE_CONFIRM = "webrtc-confirm"
# RFC 5705: labels outside the IANA registry start with "EXPERIMENTAL".
EXPORTER_LABEL = b"EXPERIMENTAL-handoff-v1-webrtc-binding"
EXPORTER_LEN = 32
DEFAULT_CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0
HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024
MAX_RECV_BUFFER = 32 * 1024 * 1024
MAX_SDP = 32 * 1024
MAX_CONFIRM = 1024
MAX_FINGERPRINTS = 8
CHANNEL_LABEL = "handoff"
CHANNEL_ID = 0
ROLE_OFFERER = "offerer"
ROLE_ANSWERER = "answerer"
_VERSION = 1
# Digest sizes of the algorithms aiortc offers and checks.
_FP_ALGORITHMS = {"sha-256": 32, "sha-384": 48, "sha-512": 64}
_HEX = frozenset("0123456789ABCDEF")

Signal = Callable[[bytes], Awaitable[bytes]]
"""Sends our signed offer envelope to the peer and returns its signed answer envelope."""

Fingerprint = tuple[str, str]
# What aiortc raises for an SDP it cannot use (its parser is not strict about types).
_SDP_ERRORS = (ValueError, LookupError, TypeError, InvalidAccessError, InvalidStateError)


@dataclass(frozen=True)
class IceServer:
    """A STUN or TURN server (only the first of each kind is used by aiortc)."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None


@dataclass(frozen=True)
class WebRtcOptions:
    """Connection settings.

    ``loopback``: None offers a 127.0.0.1 host candidate only when the host has
    no other address (a loopback-only machine or namespace); True always adds
    it; False never. ``host_addresses``, if set, replaces interface discovery:
    host candidates are gathered on exactly those addresses.
    """

    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    ice_servers: tuple[IceServer, ...] = ()
    loopback: bool | None = None
    host_addresses: tuple[str, ...] | None = None
    send_stall_timeout: float = 60.0


# ---------------------------------------------------------------- pure: SDP and payloads


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


def _sha256_of(fps: list[Fingerprint]) -> str:
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

    def pack(self) -> bytes:
        """msgpack of the payload (offer_nonce only in answers)."""
        body: dict[str, Any] = {
            "v": _VERSION,
            "cid": self.cid,
            "sdp": self.sdp,
            "fp": [list(f) for f in self.fingerprints],
        }
        if self.offer_nonce is not None:
            body["offer_nonce"] = self.offer_nonce
        return msgpack.packb(body, use_bin_type=True)

    @classmethod
    def unpack(cls, data: bytes, *, answer: bool) -> Description:
        """Strictly decode an offer (answer=False) or answer payload."""
        what = "answer" if answer else "offer"
        body = _unpack(data, max_str=MAX_SDP, what=what)
        keys = {"v", "cid", "sdp", "fp"} | ({"offer_nonce"} if answer else set())
        if not isinstance(body, dict) or set(body) != keys or body["v"] != _VERSION:
            raise PeerAuthError(f"{what} has the wrong fields", code=f"{what}-malformed")
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
        return cls(cid=cid, sdp=sdp, fingerprints=checked, offer_nonce=nonce)


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


def _cert_fp(cert: x509.Certificate) -> str:
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


# ---------------------------------------------------------------- aiortc plumbing


def _configuration(options: WebRtcOptions) -> RTCConfiguration:
    # An explicit (possibly empty) list: aiortc's default is a public STUN server.
    servers = [
        RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential)
        for s in options.ice_servers
    ]
    return RTCConfiguration(iceServers=servers)


def _host_addresses(found: list[str], options: WebRtcOptions) -> list[str]:
    if options.host_addresses is not None:
        return list(options.host_addresses)
    addresses = list(found)
    if options.loopback or (options.loopback is None and not addresses):
        addresses.append("127.0.0.1")
    return addresses


def _prepare_gathering(pc: RTCPeerConnection, options: WebRtcOptions) -> None:
    """Choose this connection's host candidate addresses (aioice skips 127.0.0.1).

    aioice's ``Connection.gather_candidates`` passes the interface addresses to
    ``get_component_candidates``; we wrap that method on this one instance
    only, so no global state changes.
    """
    sctp = pc.sctp
    if sctp is None:  # pragma: no cover - the data channel creates it
        raise TransportError("no SCTP transport", code="internal")
    conn: Any = sctp.transport.transport.iceGatherer._connection
    original = conn.get_component_candidates

    async def get_component_candidates(component: int, addresses: list[str], **kwargs: Any) -> Any:
        return await original(
            component=component, addresses=_host_addresses(addresses, options), **kwargs
        )

    conn.get_component_candidates = get_component_candidates


def _local_fingerprints(pc: RTCPeerConnection) -> list[Fingerprint]:
    sctp = pc.sctp
    if sctp is None:  # pragma: no cover
        raise TransportError("no SCTP transport", code="internal")
    return [(f.algorithm, f.value) for f in sctp.transport.getLocalParameters().fingerprints]


def _local_sdp(pc: RTCPeerConnection) -> str:
    desc = pc.localDescription
    if desc is None:  # pragma: no cover
        raise TransportError("no local description", code="internal")
    return desc.sdp


def _open(data: bytes, purpose: str, local: LocalIdentity) -> envelope.Opened:
    try:
        opened = envelope.open_envelope(
            data,
            purpose=purpose,
            recipient=local.device_id,
            trust=local.current_trust(),
            now=time.time(),
            replay=local.replay,
        )
    except VerificationError as exc:
        raise PeerAuthError(exc.message, code=exc.code) from exc
    if opened.sender.device_id == local.device_id:
        raise PeerAuthError("envelope is from ourselves", code="cert-is-self")
    return opened


async def _close_pc(pc: RTCPeerConnection) -> None:
    try:
        await asyncio.wait_for(pc.close(), CLOSE_TIMEOUT)
    except TimeoutError:
        log.warning("peer connection did not close in time")


class WebRtcChannel(Channel):
    """A Channel over one negotiated, ordered, reliable aiortc data channel."""

    path = PATH_DIRECT

    def __init__(self, pc: RTCPeerConnection, dc: RTCDataChannel, options: WebRtcOptions) -> None:
        self._pc = pc
        self._dc = dc
        self._options = options
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._opened = asyncio.Event()
        self._dc_closed = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._closed = False
        self._released = False
        self._error: TransportError | None = None
        self._authenticated = False
        self.bytes_sent = 0
        self.bytes_received = 0
        dc.bufferedAmountLowThreshold = LOW_WATER
        dc.on("message", self._on_message)
        dc.on("open", self._opened.set)
        dc.on("close", self._on_close)
        dc.on("bufferedamountlow", self._writable.set)
        pc.on("connectionstatechange", self._on_state)

    # -- aiortc callbacks (synchronous, on the event loop)

    def _on_message(self, data: bytes | str) -> None:
        if self._closed:
            return
        if not isinstance(data, bytes):
            self._fail(TransportError("peer sent a text message", code="protocol-violation"))
            return
        if self._queued + len(data) > MAX_RECV_BUFFER:
            # aiortc gives no receive flow control; the layer above must window.
            self._fail(TransportError("receive buffer overflow", code="recv-overflow"))
            return
        self._queue.append(data)
        self._queued += len(data)
        self._readable.set()

    def _on_close(self) -> None:
        self._dc_closed.set()
        self._mark_closed()

    def _on_state(self) -> None:
        state = self._pc.connectionState
        if state in ("failed", "closed"):
            self._dc_closed.set()
        if state == "failed":
            self._fail(self._failure())
        elif state == "closed":
            self._mark_closed()

    def _failure(self) -> TransportError:
        if self._pc.iceConnectionState == "failed":
            return TransportError("ICE failed", code="ice-failed")
        return TransportError("DTLS failed", code="dtls-failed")

    def _fail(self, error: TransportError) -> None:
        if self._error is None and not self._closed:
            self._error = error
            log.info("channel failed: %s", error.code)
        self._mark_closed()
        if self._dc.readyState == "open":
            self._dc.close()

    def _mark_closed(self) -> None:
        self._closed = True
        self._readable.set()
        self._writable.set()
        self._opened.set()

    # -- setup

    async def _wait_open(self) -> None:
        await self._opened.wait()
        if self._dc.readyState != "open":
            raise self._error or self._failure()

    async def _recv_raw(self) -> bytes:
        while not self._queue:
            if self._closed:
                raise self._error or TransportError("channel closed", code="channel-closed")
            self._readable.clear()
            await self._readable.wait()
        data = self._queue.popleft()
        self._queued -= len(data)
        return data

    def _dtls_session(self) -> Any:
        sctp = self._pc.sctp
        ssl = getattr(sctp.transport, "_ssl", None) if sctp is not None else None
        if ssl is None or sctp is None or sctp.transport.state != "connected":
            raise PeerAuthError("DTLS session is not available", code="dtls-failed")
        return ssl

    async def _confirm(
        self, binding: Binding, role: str, key: Ed25519PrivateKey, peer: identity.PeerIdentity
    ) -> None:
        """Check the negotiated DTLS certificates, exchange confirmations; then hand out."""
        ssl = self._dtls_session()
        mine, theirs = (
            (binding.offerer_fp, binding.answerer_fp)
            if role == ROLE_OFFERER
            else (binding.answerer_fp, binding.offerer_fp)
        )
        peer_cert = ssl.get_peer_certificate(as_cryptography=True)
        own_cert = ssl.get_certificate(as_cryptography=True)
        if peer_cert is None or _cert_fp(peer_cert) != theirs:
            raise PeerAuthError(
                "negotiated DTLS certificate is not the signed one",
                code="dtls-fingerprint-mismatch",
            )
        if own_cert is None or _cert_fp(own_cert) != mine:  # pragma: no cover - aiortc invariant
            raise PeerAuthError("our DTLS certificate is not the signed one", code="internal")
        exporter = bytes(ssl.export_keying_material(EXPORTER_LABEL, EXPORTER_LEN))
        self._dc.send(make_confirm(binding, role, key, exporter))
        try:
            data = await self._recv_raw()
        except TransportError as exc:
            if exc.code != "channel-closed":
                raise
            raise TransportError(
                "peer closed the channel before confirming", code="peer-closed-handshake"
            ) from None
        peer_key = peer.cert.public_key()
        if not isinstance(peer_key, Ed25519PublicKey):  # pragma: no cover - verified cert
            raise PeerAuthError("peer key is not Ed25519", code="cert-invalid")
        peer_role = ROLE_ANSWERER if role == ROLE_OFFERER else ROLE_OFFERER
        check_confirm(data, binding, peer_role, peer_key, exporter)
        self.peer = peer
        self._authenticated = True
        log.info("channel authenticated", extra={"peer": peer.device_id, "role": role})

    # -- Channel

    @property
    def closed(self) -> bool:
        """True once closed by either side or by failure."""
        return self._closed

    async def send(self, data: bytes) -> None:
        """Send one message; waits while more than HIGH_WATER bytes are buffered."""
        check_message(data)
        async with self._send_lock:
            loop = asyncio.get_running_loop()
            stall_deadline = loop.time() + self._options.send_stall_timeout
            while self._dc.bufferedAmount > HIGH_WATER and not self._closed:
                self._writable.clear()
                try:
                    async with asyncio.timeout_at(stall_deadline):
                        await self._writable.wait()
                except TimeoutError:
                    raise TransportError(
                        "peer stopped acknowledging data", code="send-stalled"
                    ) from None
            if self._closed or self._dc.readyState != "open":
                raise self._error or TransportError("channel closed", code="channel-closed")
            self._dc.send(data)
            self.bytes_sent += len(data)

    async def recv(self) -> bytes:
        """The next message; after the peer closes, buffered messages first, then channel-closed."""
        data = await self._recv_raw()
        self.bytes_received += len(data)
        return data

    async def close(self) -> None:
        """Close gracefully: data already sent is delivered before the peer sees the close."""
        if self._released:
            return
        self._released = True
        try:
            if self._authenticated and self._dc.readyState == "open" and self._error is None:
                # A stream reset follows queued data in order; its completion
                # means the peer has everything. The pc.close() below aborts SCTP.
                self._dc.close()
                try:
                    await asyncio.wait_for(self._dc_closed.wait(), CLOSE_TIMEOUT)
                except TimeoutError:
                    log.info("data channel close not acknowledged in time")
        finally:
            self._mark_closed()
            self._queue.clear()
            self._queued = 0
            await _close_pc(self._pc)


# ---------------------------------------------------------------- connect / accept


def _timeout(deadline: float | None, options: WebRtcOptions) -> float:
    if deadline is not None:
        return deadline
    return asyncio.get_running_loop().time() + options.connect_timeout


async def connect(
    *,
    local: LocalIdentity,
    peer_device_id: str,
    signal: Signal,
    deadline: float | None = None,
    options: WebRtcOptions | None = None,
) -> WebRtcChannel:
    """Open an authenticated channel to ``peer_device_id`` (the caller side).

    ``deadline`` is event loop time (default: now + options.connect_timeout).
    Raises PeerAuthError (the peer failed authentication, with the reason's
    code), PeerRefusedError (from ``signal``: the peer refused us) or
    TransportError (connect-timeout, ice-failed, dtls-failed, ...).
    """
    options = options or WebRtcOptions()
    deadline = _timeout(deadline, options)
    if not identity.is_device_id(peer_device_id) or peer_device_id == local.device_id:
        raise TransportError("not a peer device id", code="bad-peer")
    pc = RTCPeerConnection(_configuration(options))
    channel: WebRtcChannel | None = None
    try:
        async with asyncio.timeout_at(deadline):
            dc = pc.createDataChannel(CHANNEL_LABEL, negotiated=True, id=CHANNEL_ID)
            channel = WebRtcChannel(pc, dc, options)
            _prepare_gathering(pc, options)
            await pc.setLocalDescription(await pc.createOffer())
            cid = secrets.token_bytes(16)
            offer_nonce = secrets.token_bytes(envelope.NONCE_LEN)
            ours = _local_fingerprints(pc)
            offer = envelope.seal(
                local.key,
                local.cert_der,
                purpose=PURPOSE_OFFER,
                recipient=peer_device_id,
                payload=Description(cid=cid, sdp=_local_sdp(pc), fingerprints=ours).pack(),
                now=time.time(),
                nonce=offer_nonce,
            )
            answer_data = await signal(offer)
            opened = _open(answer_data, PURPOSE_ANSWER, local)
            if opened.sender.device_id != peer_device_id:
                raise PeerAuthError("answer is from another device", code="cert-wrong-device")
            answer = Description.unpack(opened.payload, answer=True)
            if answer.cid != cid or answer.offer_nonce != offer_nonce:
                raise PeerAuthError("answer is for another offer", code="answer-mismatch")
            check_sdp(answer.sdp, answer.fingerprints)
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.sdp, type="answer"))
            except _SDP_ERRORS as exc:
                raise PeerAuthError("answer SDP is unusable", code="sdp-invalid") from exc
            await channel._wait_open()
            binding = Binding(
                cid=cid,
                offer_nonce=offer_nonce,
                answer_nonce=opened.nonce,
                offerer=local.device_id,
                answerer=peer_device_id,
                offerer_fp=_sha256_of(ours),
                answerer_fp=_sha256_of(answer.fingerprints),
            )
            await channel._confirm(binding, ROLE_OFFERER, local.key, opened.sender)
    except TimeoutError:
        await _abandon(pc, channel)
        raise TransportError(
            "connecting took longer than the deadline", code="connect-timeout"
        ) from None
    except BaseException:
        await _abandon(pc, channel)
        raise
    return channel


async def _abandon(pc: RTCPeerConnection, channel: WebRtcChannel | None) -> None:
    if channel is not None:
        await channel.close()
    else:
        await _close_pc(pc)


class Accepted:
    """An accepted offer: the answer to send back, and the channel once it opens."""

    def __init__(
        self,
        *,
        answer: bytes,
        peer: identity.PeerIdentity,
        channel: WebRtcChannel,
        binding: Binding,
        key: Ed25519PrivateKey,
        deadline: float,
    ) -> None:
        self.answer = answer
        self.peer = peer
        self._channel = channel
        self._binding = binding
        self._key = key
        self._deadline = deadline

    async def channel(self) -> WebRtcChannel:
        """Wait until the channel is open and authenticated (or the deadline); call once.

        On failure the connection is closed and the error raised (as ``connect``).
        """
        ch = self._channel
        try:
            async with asyncio.timeout_at(self._deadline):
                await ch._wait_open()
                await ch._confirm(self._binding, ROLE_ANSWERER, self._key, self.peer)
        except TimeoutError:
            await ch.close()
            raise TransportError(
                "the caller did not connect before the deadline", code="connect-timeout"
            ) from None
        except BaseException:
            await ch.close()
            raise
        return ch

    async def close(self) -> None:
        """Give up on this connection (idempotent)."""
        await self._channel.close()


async def accept(
    *,
    local: LocalIdentity,
    offer_envelope: bytes,
    deadline: float | None = None,
    options: WebRtcOptions | None = None,
) -> Accepted:
    """Verify a signed offer and answer it (the callee side).

    Nothing is allocated for an offer that fails verification (PeerAuthError
    with the reason's code). The caller must send ``answer`` back and then
    either await ``channel()`` or ``close()`` the result.
    """
    options = options or WebRtcOptions()
    deadline = _timeout(deadline, options)
    opened = _open(offer_envelope, PURPOSE_OFFER, local)
    offer = Description.unpack(opened.payload, answer=False)
    check_sdp(offer.sdp, offer.fingerprints)
    pc = RTCPeerConnection(_configuration(options))
    channel: WebRtcChannel | None = None
    try:
        async with asyncio.timeout_at(deadline):
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
            except _SDP_ERRORS as exc:
                raise PeerAuthError("offer SDP is unusable", code="sdp-invalid") from exc
            dc = pc.createDataChannel(CHANNEL_LABEL, negotiated=True, id=CHANNEL_ID)
            channel = WebRtcChannel(pc, dc, options)
            _prepare_gathering(pc, options)
            await pc.setLocalDescription(await pc.createAnswer())
            answer_nonce = secrets.token_bytes(envelope.NONCE_LEN)
            ours = _local_fingerprints(pc)
            answer = envelope.seal(
                local.key,
                local.cert_der,
                purpose=PURPOSE_ANSWER,
                recipient=opened.sender.device_id,
                payload=Description(
                    cid=offer.cid,
                    sdp=_local_sdp(pc),
                    fingerprints=ours,
                    offer_nonce=opened.nonce,
                ).pack(),
                now=time.time(),
                nonce=answer_nonce,
            )
    except TimeoutError:
        await _abandon(pc, channel)
        raise TransportError(
            "answering took longer than the deadline", code="connect-timeout"
        ) from None
    except BaseException:
        await _abandon(pc, channel)
        raise
    binding = Binding(
        cid=offer.cid,
        offer_nonce=opened.nonce,
        answer_nonce=answer_nonce,
        offerer=opened.sender.device_id,
        answerer=local.device_id,
        offerer_fp=_sha256_of(offer.fingerprints),
        answerer_fp=_sha256_of(ours),
    )
    return Accepted(
        answer=answer,
        peer=opened.sender,
        channel=channel,
        binding=binding,
        key=local.key,
        deadline=deadline,
    )


class WebRtcDialer(Dialer):
    """Dials a device over WebRTC; ``signal(peer_device_id, offer, deadline)`` carries the offer.

    ``signaling.lan_signal`` makes one for the LAN.
    """

    name = "webrtc"

    def __init__(
        self,
        local: LocalIdentity,
        signal: Callable[[str, bytes, float], Awaitable[bytes]],
        options: WebRtcOptions | None = None,
    ) -> None:
        self._local = local
        self._signal = signal
        self._options = options or WebRtcOptions()

    async def dial(self, peer_device_id: str, *, deadline: float) -> Channel:
        """Connect to ``peer_device_id`` by ``deadline`` (event loop time)."""

        async def signal(offer: bytes) -> bytes:
            return await self._signal(peer_device_id, offer, deadline)

        return await connect(
            local=self._local,
            peer_device_id=peer_device_id,
            signal=signal,
            deadline=deadline,
            options=self._options,
        )


__all__ = [
    "MAX_MESSAGE",
    "Accepted",
    "Binding",
    "Description",
    "IceServer",
    "WebRtcChannel",
    "WebRtcDialer",
    "WebRtcOptions",
    "accept",
    "check_sdp",
    "connect",
    "sdp_fingerprints",
]
