"""The Channel over one negotiated aiortc data channel: flow control, failure, graceful close,
and the confirmation exchange that authenticates it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiortc import RTCDataChannel, RTCPeerConnection
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from handoffd import identity
from handoffd.errors import TransportError
from handoffd.transport.base import PATH_DIRECT, PeerAuthError, check_message
from handoffd.transport.chanqueue import QueuedChannel
from handoffd.transport.webrtc.ackwatch import watch_acks
from handoffd.transport.webrtc.binding import (
    EXPORTER_LABEL,
    EXPORTER_LEN,
    ROLE_ANSWERER,
    ROLE_OFFERER,
    Binding,
    cert_fp,
    check_confirm,
    make_confirm,
)
from handoffd.transport.webrtc.peer import CLOSE_TIMEOUT, WebRtcOptions, close_pc

log = logging.getLogger("handoffd.transport")

HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024
MAX_RECV_BUFFER = 32 * 1024 * 1024


class WebRtcChannel(QueuedChannel):
    """A Channel over one negotiated, ordered, reliable aiortc data channel."""

    path = PATH_DIRECT

    def __init__(self, pc: RTCPeerConnection, dc: RTCDataChannel, options: WebRtcOptions) -> None:
        self._pc = pc
        self._dc = dc
        self._options = options
        self._init_queue()
        self._writable = asyncio.Event()
        self._opened = asyncio.Event()
        self._dc_closed = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._released = False
        self._authenticated = False
        self._watch: asyncio.Task[None] | None = None
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

    def _on_silent(self) -> None:
        self._fail(TransportError("the peer stopped acknowledging data", code="peer-silent"))

    def _mark_closed(self) -> None:
        self._closed = True
        watch = self._watch
        if watch is not None and watch is not asyncio.current_task():
            watch.cancel()  # close() waits for it
        self._readable.set()
        self._writable.set()
        self._opened.set()

    # -- setup

    async def wait_open(self) -> None:
        """Wait until the data channel opens; raise the failure if it closed instead."""
        await self._opened.wait()
        if self._dc.readyState != "open":
            raise self._error or self._failure()

    def _dtls_session(self) -> Any:
        sctp = self._pc.sctp
        ssl = getattr(sctp.transport, "_ssl", None) if sctp is not None else None
        if ssl is None or sctp is None or sctp.transport.state != "connected":
            raise PeerAuthError("DTLS session is not available", code="dtls-failed")
        return ssl

    async def confirm(
        self,
        binding: Binding,
        role: str,
        key: Ed25519PrivateKey,
        peer: identity.PeerIdentity,
        *,
        use_exporter: bool = True,
    ) -> None:
        """Check the negotiated DTLS certificates, exchange confirmations; then hand out.

        ``use_exporter=False``: the fingerprint-only binding a browser peer asks for in its
        signed description (``BIND_FINGERPRINT``): both confirmations sign an empty exporter.
        """
        ssl = self._dtls_session()
        mine, theirs = (
            (binding.offerer_fp, binding.answerer_fp)
            if role == ROLE_OFFERER
            else (binding.answerer_fp, binding.offerer_fp)
        )
        peer_cert = ssl.get_peer_certificate(as_cryptography=True)
        own_cert = ssl.get_certificate(as_cryptography=True)
        if peer_cert is None or cert_fp(peer_cert) != theirs:
            raise PeerAuthError(
                "negotiated DTLS certificate is not the signed one",
                code="dtls-fingerprint-mismatch",
            )
        if own_cert is None or cert_fp(own_cert) != mine:  # pragma: no cover - aiortc invariant
            raise PeerAuthError("our DTLS certificate is not the signed one", code="internal")
        exporter = (
            bytes(ssl.export_keying_material(EXPORTER_LABEL, EXPORTER_LEN)) if use_exporter else b""
        )
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
        if self._options.ack_silence > 0 and self._pc.sctp is not None:
            self._watch = asyncio.create_task(
                watch_acks(self._pc.sctp, self._options.ack_silence, self._on_silent),
                name="webrtc-ackwatch",
            )
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
                raise self._closed_error()
            self._dc.send(data)
            self.bytes_sent += len(data)

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
            await close_pc(self._pc)
            if self._watch is not None:
                await asyncio.wait([self._watch])
