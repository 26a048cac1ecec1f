"""The relay transport: TLS 1.3 between two devices, inside a byte pipe through the server.

The server (``handoffd.server.relay``) forwards opaque binary messages between
two devices of one account. Inside that pipe the devices run TLS 1.3 with
their device certificates, via ``ssl.SSLContext.wrap_bio`` over two
``MemoryBIO``s: mutual authentication, the account CA as the only trust root,
then our own ``identity.verify_device_cert`` (account, device id ↔ key, CRL,
the expected peer). The initiator is the TLS client, the target the server.

After the handshake each side sends one framed hello
(``handoffd.wire.relayhello``) so a side that refuses its peer says why, and
neither side hands out a channel before the other accepted it. Then application messages travel as frames (4-byte length,
≤ 64 KiB payload, ``handoffd.proto.framing``) inside TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from handoffd import identity
from handoffd.errors import HandoffError, ProtocolError, ServerError, TransportError
from handoffd.proto.framing import FrameDecoder, encode_frame
from handoffd.transport import tlskey
from handoffd.transport.base import (
    MAX_MESSAGE,
    PATH_RELAY,
    LocalIdentity,
    PeerAuthError,
    PeerRefusedError,
    check_message,
)
from handoffd.transport.chanqueue import QueuedChannel
from handoffd.transport.relaypeer import verify_peer
from handoffd.wire import relayhello

logger = logging.getLogger("handoffd.transport.relay")

MAX_CHUNK = 96 * 1024
"""Largest relay message we send (the server takes up to 128 KiB)."""
READ_CHUNK = 256 * 1024
RECV_HIGH = 4 * 1024 * 1024
"""Decoded messages held unread before we stop reading the relay (back-pressure)."""
CLOSE_TIMEOUT = 2.0
REFUSE_LINGER = 1.0
"""After a refusal, how long we read (and drop) what the peer still sends before closing."""
# X509_V_FLAG_NO_CHECK_TIME: validity is checked by verify_device_cert, with clock skew.
_NO_CHECK_TIME = 0x200000


class ByteStream(Protocol):
    """An ordered, reliable pipe of binary messages (``handoffd.serverlink.RelayStream``)."""

    @property
    def error(self) -> HandoffError | None:
        """Why the stream ended, if known."""

    async def send(self, data: bytes) -> None:
        """Send one message (≤ MAX_CHUNK bytes), waiting under back-pressure."""

    async def recv(self) -> bytes | None:
        """The next message, or None once the stream ended."""

    async def close(self) -> None:
        """Close (idempotent)."""


@dataclass(frozen=True)
class RelayOptions:
    """Relay transport settings."""

    connect_timeout: float = 15.0
    send_stall_timeout: float = 60.0


# ---------------------------------------------------------------- TLS context


def tls_context(local: LocalIdentity, *, server_side: bool) -> ssl.SSLContext:
    """TLS 1.3 only, mutual auth, our account CA as the only root, no hostname check."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # no names: the peer is checked by verify_device_cert
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= _NO_CHECK_TIME
    ca_pem = identity.cert_to_pem(local.current_trust().ca_cert).decode("ascii")
    ctx.load_verify_locations(cadata=ca_pem)
    cert_pem = identity.cert_to_pem(identity.load_cert(local.cert_der))
    tlskey.load_chain(ctx, cert_pem, local.key, label="handoff-relay-tls")
    if server_side:
        ctx.num_tickets = 0  # no resumption: every relay connection authenticates afresh
    return ctx


def _kebab(text: str) -> str:
    code = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:64]
    return code or "tls"


def _tls_error(exc: ssl.SSLError) -> TransportError:
    reason = str(exc.reason or "")
    if "ALERT" in reason:
        return PeerRefusedError("the peer refused the TLS handshake", peer_code=_kebab(reason))
    return TransportError(f"TLS failed: {reason or type(exc).__name__}", code="tls-failed")


# ---------------------------------------------------------------- the channel


def _stream_error(stream: ByteStream, default: str) -> TransportError:
    error = stream.error
    if error is None or error.code in ("relay-lost",):
        return TransportError("the relay stream ended", code=default)
    return TransportError(error.message, code=error.code)


async def _stop_task(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` (unless it is the caller) and wait for it; an outer cancel propagates."""
    if task is None or task is asyncio.current_task():
        return
    if not task.done():
        task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


FirstCheck = Callable[[identity.PeerIdentity, bytes], None]
"""The TLS server's check of the client's first frame (the lane's token); raises PeerAuthError."""


class RelayChannel(QueuedChannel):
    """A Channel over TLS 1.3 with the device certificates over a ByteStream.

    Through the server's relay (``path`` relay) or straight over TCP on the LAN (``path``
    lane, ``handoffd.transport.lane``): one implementation of the devices' TLS, checks and
    hello for both.
    """

    path = PATH_RELAY

    def __init__(
        self,
        stream: ByteStream,
        sslobj: ssl.SSLObject,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        options: RelayOptions,
    ) -> None:
        self._stream = stream
        self._ssl = sslobj
        self._in = incoming
        self._out = outgoing
        self._options = options
        self._decoder = FrameDecoder(max_frame=MAX_MESSAGE)
        self._init_queue()
        self._space = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._flush_lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._released = False
        self._eof = False
        self._authenticated = False

    # -- establishing

    @classmethod
    async def establish(
        cls,
        stream: ByteStream,
        local: LocalIdentity,
        *,
        server_side: bool,
        expected_peer: str | None,
        deadline: float,
        options: RelayOptions | None = None,
        path: str = PATH_RELAY,
        first_frame: bytes | None = None,
        check_first: FirstCheck | None = None,
    ) -> RelayChannel:
        """Run TLS over ``stream``, verify the peer, exchange hellos; the stream is ours now.

        ``expected_peer`` None (a TLS server that learns its peer from the certificate)
        accepts any valid, unrevoked device of the account. ``first_frame`` (client) is sent
        before the hellos and ``check_first`` (server) decides on it: a refusal goes back in
        the hello. On any failure the stream is closed and PeerAuthError (we refused the
        peer), PeerRefusedError (it refused us) or TransportError raised.
        """
        try:
            ctx = await asyncio.to_thread(tls_context, local, server_side=server_side)
        except BaseException:
            await stream.close()
            raise
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        sslobj = ctx.wrap_bio(incoming, outgoing, server_side=server_side)
        channel = cls(stream, sslobj, incoming, outgoing, options or RelayOptions())
        channel.path = path
        try:
            async with asyncio.timeout_at(deadline):
                await channel._handshake()
                peer = await channel._check_peer(local, expected_peer)
                channel._reader = asyncio.create_task(channel._read_loop(), name=f"{path}-reader")
                if first_frame is not None:
                    await channel._send_raw(first_frame)
                if check_first is not None:
                    await channel._check_first(peer, check_first)
                sent: TransportError | None = None
                try:
                    await channel._send_raw(relayhello.encode_hello(None))
                except TransportError as exc:
                    sent = exc  # the peer may have refused us and gone: read why first
                try:
                    hello = await channel._recv_raw()
                except TransportError as exc:
                    raise sent or exc from None
                refused = relayhello.parse_hello(hello)
                if refused is not None:
                    raise PeerRefusedError("the peer refused us", peer_code=refused)
        except TimeoutError:
            await channel._abandon()
            raise TransportError(
                "relay connection took longer than the deadline", code="connect-timeout"
            ) from None
        except ProtocolError as exc:
            await channel._abandon()
            raise TransportError(exc.message, code=exc.code) from None
        except BaseException:
            await channel._abandon()
            raise
        channel.peer = peer
        channel._authenticated = True
        logger.info(
            "%s channel authenticated",
            path,
            extra={"peer": peer.device_id, "role": "server" if server_side else "client"},
        )
        return channel

    async def _handshake(self) -> None:
        while True:
            try:
                self._ssl.do_handshake()
            except ssl.SSLWantReadError:
                want_read = True
            except ssl.SSLCertVerificationError as exc:
                await self._flush_quietly()  # the alert tells the peer
                raise PeerAuthError(
                    f"peer certificate is not from our account CA ({exc.verify_message})",
                    code="tls-cert-untrusted",
                ) from None
            except ssl.SSLError as exc:
                await self._flush_quietly()
                raise _tls_error(exc) from None
            else:
                want_read = False
            await self._flush()
            if not want_read:
                return
            data = await self._stream.recv()
            if data is None:
                raise _stream_error(self._stream, "peer-closed-handshake")
            self._in.write(data)

    async def _check_peer(
        self, local: LocalIdentity, expected: str | None
    ) -> identity.PeerIdentity:
        try:
            return verify_peer(self._ssl.getpeercert(binary_form=True), local, expected)
        except PeerAuthError as exc:
            await self._refuse(exc)
            raise

    async def _check_first(self, peer: identity.PeerIdentity, check: FirstCheck) -> None:
        try:
            check(peer, await self._recv_raw())
        except PeerAuthError as exc:
            await self._refuse(exc)
            raise

    async def _refuse(self, exc: PeerAuthError) -> None:
        with contextlib.suppress(HandoffError, ssl.SSLError):
            await self._send_raw(relayhello.encode_hello(exc.code))
        await _linger(self._reader, self._stream)

    # -- plumbing

    async def _flush(self) -> None:
        """Send what TLS wrote, in order (one flusher at a time)."""
        async with self._flush_lock:
            while self._out.pending:
                chunk = self._out.read(MAX_CHUNK)
                try:
                    async with asyncio.timeout(self._options.send_stall_timeout):
                        await self._stream.send(chunk)
                except TimeoutError:
                    raise TransportError(
                        "the relay stopped taking data", code="send-stalled"
                    ) from None
                except ServerError as exc:
                    raise TransportError(exc.message, code=exc.code) from None

    async def _flush_quietly(self) -> None:
        with contextlib.suppress(HandoffError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._flush()

    async def _send_raw(self, payload: bytes) -> None:
        """Encrypt and send one frame; TransportError (the caller decides if it is fatal)."""
        try:
            self._ssl.write(encode_frame(payload, max_frame=MAX_MESSAGE))
        except ssl.SSLError as exc:
            raise _tls_error(exc) from None
        await self._flush()

    def _dequeued(self) -> None:
        if self._queued <= RECV_HIGH // 2:
            self._space.set()

    def _drain_tls(self) -> None:
        """Decrypt what arrived into whole messages."""
        while True:
            try:
                chunk = self._ssl.read(READ_CHUNK)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLZeroReturnError:
                chunk = b""
            except ssl.SSLError as exc:
                raise _tls_error(exc) from None
            if not chunk:  # CPython returns b"" for the peer's close_notify
                self._eof = True
                self._decoder.eof()  # ProtocolError(frame-truncated) mid-message
                return
            frames = self._decoder.feed(chunk)
            for frame in frames:
                self._queue.append(frame)
                self._queued += len(frame)
            if frames:
                self._readable.set()

    async def _read_loop(self) -> None:
        try:
            while True:
                # Drain first: the handshake may have left records in the BIO.
                self._drain_tls()
                if self._out.pending:
                    await self._flush()  # e.g. a TLS KeyUpdate answer
                if self._eof:
                    return
                while self._queued > RECV_HIGH and not self._closed:
                    self._space.clear()
                    await self._space.wait()
                data = await self._stream.recv()
                if data is None:
                    self._fail(_stream_error(self._stream, "relay-lost"))
                    return
                self._in.write(data)
        except ProtocolError as exc:
            self._fail(TransportError(exc.message, code=exc.code))
        except TransportError as exc:
            self._fail(exc)
        finally:
            self._mark_closed()

    def _fail(self, error: TransportError) -> TransportError:
        if self._error is None and not self._closed:
            self._error = error
            logger.info("%s channel failed code=%s", self.path, error.code)
        self._mark_closed()
        return error

    def _mark_closed(self) -> None:
        self._closed = True
        self._readable.set()
        self._space.set()

    async def _stop_reader(self) -> None:
        task, self._reader = self._reader, None
        await _stop_task(task)

    async def _abandon(self) -> None:
        self._released = True
        self._mark_closed()
        try:
            await self._stop_reader()
        finally:
            await self._stream.close()

    # -- Channel

    @property
    def closed(self) -> bool:
        """True once closed by either side or by failure."""
        return self._closed

    async def send(self, data: bytes) -> None:
        """Send one message; waits while the relay (and so the peer) is not taking data."""
        check_message(data)
        async with self._send_lock:
            if self._closed:
                raise self._closed_error()
            try:
                await self._send_raw(data)
            except TransportError as exc:
                raise self._fail(exc) from None
            self.bytes_sent += len(data)

    async def close(self) -> None:
        """Close: TLS close_notify after everything sent, then the relay stream (idempotent)."""
        if self._released:
            return
        self._released = True
        graceful = self._authenticated and self._error is None and not self._eof
        self._mark_closed()
        try:
            if graceful:
                with contextlib.suppress(ssl.SSLError):
                    self._ssl.unwrap()  # writes close_notify; wants the peer's, which we skip
                await self._flush_quietly()
        finally:
            try:
                await self._stop_reader()
            finally:
                await self._stream.close()


__all__ = [
    "ByteStream",
    "RelayChannel",
    "RelayOptions",
    "tls_context",
]


async def _linger(reader: asyncio.Task[None] | None, stream: ByteStream) -> None:
    """Read and drop what the peer still sends until it closes (or REFUSE_LINGER): a close
    with unread data resets the connection, and the reset can overtake our refusal, so the
    peer would learn only that the connection broke."""
    if reader is not None:  # it reads (and ends at the peer's close)
        await asyncio.wait({reader}, timeout=REFUSE_LINGER)
        return
    with contextlib.suppress(TimeoutError, HandoffError, OSError):
        async with asyncio.timeout(REFUSE_LINGER):
            while await stream.recv() is not None:
                pass
