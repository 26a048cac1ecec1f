"""Connecting (the caller) and accepting (the callee) an authenticated WebRTC channel."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InvalidAccessError, InvalidStateError
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from handoffd import envelope, identity
from handoffd.errors import TransportError, VerificationError
from handoffd.transport.base import Channel, Dialer, LocalIdentity, PeerAuthError
from handoffd.transport.dialdoubt import doubt
from handoffd.transport.webrtc.binding import (
    PURPOSE_ANSWER,
    PURPOSE_OFFER,
    ROLE_ANSWERER,
    ROLE_OFFERER,
    Binding,
    Description,
    check_sdp,
    sha256_of,
)
from handoffd.transport.webrtc.channel import WebRtcChannel
from handoffd.transport.webrtc.peer import (
    CHANNEL_ID,
    CHANNEL_LABEL,
    WebRtcOptions,
    close_pc,
    configuration,
    local_fingerprints,
    local_sdp,
    prepare_gathering,
)

Signal = Callable[[bytes], Awaitable[bytes]]
"""Sends our signed offer envelope to the peer and returns its signed answer envelope."""

# What aiortc raises for an SDP it cannot use (its parser is not strict about types).
_SDP_ERRORS = (ValueError, LookupError, TypeError, InvalidAccessError, InvalidStateError)

log = logging.getLogger("handoffd.transport")


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
    pc = RTCPeerConnection(configuration(options))
    channel: WebRtcChannel | None = None
    try:
        async with asyncio.timeout_at(deadline):
            dc = pc.createDataChannel(CHANNEL_LABEL, negotiated=True, id=CHANNEL_ID)
            channel = WebRtcChannel(pc, dc, options)
            prepare_gathering(pc, options)
            await pc.setLocalDescription(await pc.createOffer())
            cid = secrets.token_bytes(16)
            offer_nonce = secrets.token_bytes(envelope.NONCE_LEN)
            ours = local_fingerprints(pc)
            offer = envelope.seal(
                local.key,
                local.cert_der,
                purpose=PURPOSE_OFFER,
                recipient=peer_device_id,
                payload=Description(cid=cid, sdp=local_sdp(pc), fingerprints=ours).pack(),
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
            await _open_or_doubt(pc, channel, options.ice_doubt)
            binding = Binding(
                cid=cid,
                offer_nonce=offer_nonce,
                answer_nonce=opened.nonce,
                offerer=local.device_id,
                answerer=peer_device_id,
                offerer_fp=sha256_of(ours),
                answerer_fp=sha256_of(answer.fingerprints),
            )
            await channel.confirm(
                binding,
                ROLE_OFFERER,
                local.key,
                opened.sender,
                use_exporter=answer.uses_exporter,
            )
    except TimeoutError:
        await _abandon(pc, channel)
        raise TransportError(
            "connecting took longer than the deadline", code="connect-timeout"
        ) from None
    except BaseException:
        await _abandon(pc, channel)
        raise
    return channel


async def _open_or_doubt(pc: RTCPeerConnection, channel: WebRtcChannel, after: float) -> None:
    """Wait for the data channel to open; if no ICE pair succeeded ``after`` seconds after
    the answer was applied, ``doubt()`` (a racing connector starts the relay now) and go on
    waiting: on a LAN the checks succeed within milliseconds, with UDP blocked they never do."""
    opening = asyncio.ensure_future(channel.wait_open())
    try:
        done, _ = await asyncio.wait([opening], timeout=after)
        if not done and pc.iceConnectionState not in ("connected", "completed"):
            log.info("no ICE pair succeeded %.2f s after the answer: doubting", after)
            doubt()
        await opening
    finally:
        if not opening.done():
            opening.cancel()
            await asyncio.wait([opening])


async def _abandon(pc: RTCPeerConnection, channel: WebRtcChannel | None) -> None:
    if channel is not None:
        await channel.close()
    else:
        await close_pc(pc)


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
        use_exporter: bool = True,
    ) -> None:
        self.answer = answer
        self._use_exporter = use_exporter
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
                await ch.wait_open()
                await ch.confirm(
                    self._binding,
                    ROLE_ANSWERER,
                    self._key,
                    self.peer,
                    use_exporter=self._use_exporter,
                )
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
    pc = RTCPeerConnection(configuration(options))
    channel: WebRtcChannel | None = None
    try:
        async with asyncio.timeout_at(deadline):
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
            except _SDP_ERRORS as exc:
                raise PeerAuthError("offer SDP is unusable", code="sdp-invalid") from exc
            dc = pc.createDataChannel(CHANNEL_LABEL, negotiated=True, id=CHANNEL_ID)
            channel = WebRtcChannel(pc, dc, options)
            prepare_gathering(pc, options)
            await pc.setLocalDescription(await pc.createAnswer())
            answer_nonce = secrets.token_bytes(envelope.NONCE_LEN)
            ours = local_fingerprints(pc)
            answer = envelope.seal(
                local.key,
                local.cert_der,
                purpose=PURPOSE_ANSWER,
                recipient=opened.sender.device_id,
                payload=Description(
                    cid=offer.cid,
                    sdp=local_sdp(pc),
                    fingerprints=ours,
                    offer_nonce=opened.nonce,
                    bind=offer.bind,  # a browser caller's binding is answered in kind
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
        offerer_fp=sha256_of(offer.fingerprints),
        answerer_fp=sha256_of(ours),
    )
    return Accepted(
        answer=answer,
        peer=opened.sender,
        channel=channel,
        binding=binding,
        key=local.key,
        deadline=deadline,
        use_exporter=offer.uses_exporter,
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
