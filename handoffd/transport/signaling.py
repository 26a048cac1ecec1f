"""LAN signaling over TLS 1.3 on TCP (v2): hello, proof, then one offer in and one answer out.

The TCP connection is wrapped in TLS 1.3 (``ssl`` only) before any frame: the
server uses an ephemeral self-signed Ed25519 certificate made when it starts
(nothing in it names the device or the account), and the client does not
verify it as such. Instead the listener proves, before the caller sends
anything that names it, that it is the device the caller means to reach
(``handoffd.transport.sigauth``): the caller's hello shows account membership
(an HMAC keyed by the account CA's public key, bound to the TLS certificate),
the listener answers with a proof envelope signed by its device key and bound
to the same TLS certificate. A copied mDNS advertisement or any other impostor
gets no offer, hence neither the caller's certificate nor its ids, and its
error frames are not believed: an error before a valid proof is a transient
``signaling-refused``; only after it is a refusal the peer's own
(``PeerRefusedError``).

Wire (inside TLS): each frame is a 4-byte big-endian length N (1 <= N <=
MAX_FRAME), then N bytes: a kind byte (1 offer, 2 answer, 3 error, 4 hello,
5 proof) and the body. An offer/answer body is a signed envelope
(``handoffd.envelope``), verified by the WebRTC layer, not here; an error body
is msgpack ``{"code": str, "message": str}``. A connection carries exactly one
exchange: hello, proof, offer, then an answer or an error, and the callee
closes. Anything else gets an error frame and the connection closed; the
server keeps serving.

The frame codec is ``handoffd.transport.sigframes`` (re-exported here);
``handoffd.peering`` reuses it for signals relayed through the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import ssl
import time
from collections.abc import Awaitable, Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from handoffd import netguard
from handoffd.errors import HandoffError, TransportError
from handoffd.selfsigned import self_signed
from handoffd.transport import sigauth, tlskey
from handoffd.transport.base import LocalIdentity, PeerRefusedError
from handoffd.transport.sigframes import KIND_ANSWER as KIND_ANSWER
from handoffd.transport.sigframes import KIND_ERROR as KIND_ERROR
from handoffd.transport.sigframes import KIND_HELLO as KIND_HELLO
from handoffd.transport.sigframes import KIND_OFFER as KIND_OFFER
from handoffd.transport.sigframes import KIND_PROOF as KIND_PROOF
from handoffd.transport.sigframes import MAX_FRAME as MAX_FRAME
from handoffd.transport.sigframes import FrameError as FrameError
from handoffd.transport.sigframes import decode_error as decode_error
from handoffd.transport.sigframes import encode_error as encode_error
from handoffd.transport.sigframes import encode_frame as encode_frame
from handoffd.transport.sigframes import read_frame as read_frame

log = logging.getLogger("handoffd.transport")

READ_TIMEOUT = 5.0  # TLS up to each read before the offer: a caller has its frames ready
HANDSHAKE_TIMEOUT = 5.0
ANSWER_TIMEOUT = 20.0
WRITE_TIMEOUT = 10.0
MAX_CONNECTIONS = 64  # exchanges at once; more get "busy"
# Accept level (handoffd.netguard), counted from accept, handshakes included: one LAN
# neighbour holds at most MAX_PER_ADDRESS, and descriptors stay bounded by MAX_OPEN.
MAX_PER_ADDRESS = 4
MAX_OPEN = 128

OnOffer = Callable[[bytes], Awaitable[bytes]]
"""Given an offer envelope, return the answer envelope or raise HandoffError (its code is sent)."""
Identity = Callable[[], LocalIdentity]
"""The listener's current device identity; raises HandoffError (e.g. not-paired) if it has none."""


# ---------------------------------------------------------------- TLS


def server_context() -> ssl.SSLContext:
    """A TLS 1.3 server context with a fresh ephemeral self-signed Ed25519 certificate."""
    return server_tls()[0]


def server_tls() -> tuple[ssl.SSLContext, bytes]:
    """``server_context()`` and its certificate (DER), which the listener's proofs name.

    The certificate names nothing (``CN=handoff-signaling``, random serial); clients
    do not verify it, they check that the device's signed proof names it.
    """
    key = Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "handoff-signaling")])
    now = dt.datetime.now(dt.UTC)
    cert = self_signed(
        key,
        name,
        not_before=now - dt.timedelta(days=1),
        not_after=now + dt.timedelta(days=3650),
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.num_tickets = 0  # one exchange per connection: nothing to resume
    tlskey.load_chain(
        ctx, cert.public_bytes(serialization.Encoding.PEM), key, label="handoff-signaling-tls"
    )
    return ctx, cert.public_bytes(serialization.Encoding.DER)


def client_context() -> ssl.SSLContext:
    """A TLS 1.3 client context that does not verify the server (the proof does: module docstring)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the envelopes authenticate; TLS only hides them
    return ctx


async def _finish(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(TimeoutError, OSError):
        await asyncio.wait_for(writer.wait_closed(), WRITE_TIMEOUT)


class SignalingServer:
    """Answers WebRTC offers on a TCP port; one exchange per connection, after proving ``local``."""

    def __init__(
        self,
        host: str,
        port: int,
        on_offer: OnOffer,
        *,
        local: Identity,
        read_timeout: float = READ_TIMEOUT,
        answer_timeout: float = ANSWER_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        max_per_address: int = MAX_PER_ADDRESS,
        max_open: int = MAX_OPEN,
    ) -> None:
        self._host = host
        self._port = port
        self._on_offer = on_offer
        self._local = local
        self._read_timeout = read_timeout
        self._answer_timeout = answer_timeout
        self._max_connections = max_connections
        self.guard = netguard.ConnectionGuard(
            netguard.AcceptLimits(max_open, max_per_address, handshake_timeout),
            name="signaling",
            logger=log,
        )
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._closed = False
        self._tls: ssl.SSLContext | None = None
        self._tls_der = b""

    @property
    def port(self) -> int:
        """The bound port (after start; useful with port 0)."""
        if self._server is None or not self._server.sockets:
            raise TransportError("signaling server is not started", code="not-started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind and start serving."""
        if self._server is not None or self._closed:
            raise TransportError("signaling server already started", code="already-started")
        if self._tls is None:
            # Ephemeral: a new certificate every start (key generation and file calls: a thread).
            self._tls, self._tls_der = await asyncio.to_thread(server_tls)
        try:
            # Connections past the guard's caps are reset at accept; a peer that does not
            # complete the handshake in time is dropped by asyncio (logged at debug level
            # only); _handle runs once TLS is up.
            sock, *others = netguard.bind(self._host, self._port, self.guard)
            for other in others:  # one listening address, as before (hosts are IP literals)
                other.close()
            try:
                self._server = await asyncio.start_server(
                    self._handle,
                    sock=sock,
                    ssl=self._tls,
                    ssl_handshake_timeout=self.guard.limits.handshake_timeout,
                )
            except BaseException:
                sock.close()
                raise
        except OSError as exc:
            raise TransportError(
                f"cannot listen on {self._host}:{self._port}: {exc.strerror}",
                code="signaling-bind-failed",
            ) from exc
        log.info("signaling listening", extra={"port": self.port})

    async def close(self) -> None:
        """Stop listening and end in-flight exchanges; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(list(self._handlers))
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - always a task under start_server
            writer.close()
            return
        self._handlers.add(task)
        try:
            if len(self._handlers) > self._max_connections:
                await self._send(writer, encode_error("busy", "too many signaling connections"))
                return
            frame = await self._exchange(reader, writer)
            await self._send(writer, frame)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            try:
                await _finish(writer)
            finally:
                self._handlers.discard(task)  # after _finish: close() waits for it too

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        """Hello, proof, offer; produce the reply frame (an answer or an error)."""
        try:
            kind, body = await asyncio.wait_for(read_frame(reader), self._read_timeout)
        except TimeoutError:
            return encode_error("timeout", "no hello received in time")
        except FrameError as exc:
            log.info("bad signaling frame: %s", exc.code)
            return encode_error(exc.code, exc.message)
        if kind == KIND_OFFER:  # a v1 caller: it would send its certificate to anyone
            return encode_error("signaling-version", "signaling v2: send a hello first")
        if kind != KIND_HELLO:
            return encode_error("unexpected-frame", "expected a hello")
        try:
            local = self._local()
            nonce = sigauth.check_hello(body, local.current_trust(), self._tls_der)
            proof = sigauth.make_proof(local, nonce, self._tls_der, now=time.time())
        except HandoffError as exc:
            log.info("signaling hello refused code=%s", exc.code)
            return encode_error(exc.code, exc.message)
        await self._send(writer, encode_frame(KIND_PROOF, proof))
        try:
            kind, body = await asyncio.wait_for(read_frame(reader), self._read_timeout)
        except TimeoutError:
            return encode_error("timeout", "no offer received in time")
        except FrameError as exc:
            log.info("bad signaling frame: %s", exc.code)
            return encode_error(exc.code, exc.message)
        if kind != KIND_OFFER:
            return encode_error("unexpected-frame", "expected an offer")
        try:
            answer = await asyncio.wait_for(self._on_offer(body), self._answer_timeout)
        except TimeoutError:
            return encode_error("answer-timeout", "could not answer in time")
        except HandoffError as exc:
            log.info("offer refused: %s", exc.code)
            return encode_error(exc.code, exc.message)
        except Exception:  # one broken offer must not stop the server
            log.exception("offer handler failed")
            return encode_error("internal", "internal error")
        try:
            return encode_frame(KIND_ANSWER, answer)
        except FrameError:
            log.warning("answer is too large to send")
            return encode_error("answer-too-large", "answer is too large")

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, frame: bytes) -> None:
        writer.write(frame)
        try:
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
        except TimeoutError:
            log.info("signaling peer did not read its reply")


async def send_offer(
    host: str,
    port: int,
    envelope: bytes,
    *,
    local: LocalIdentity,
    peer_device_id: str,
    timeout: float,  # noqa: ASYNC109 - one budget for the whole exchange
) -> bytes:
    """Send an offer envelope to ``peer_device_id`` over TLS once it proved itself; the answer.

    Raises PeerRefusedError (the proven callee sent an error frame, ``peer_code``:
    authenticated) or TransportError: signaling-unreachable, signaling-tls,
    signaling-timeout, signaling-closed, signaling-protocol,
    signaling-unauthenticated (no valid proof from that device: the offer was not
    sent), signaling-refused (an error frame before the proof: unauthenticated,
    so transient, and its text is not kept). ``timeout`` bounds everything.
    """
    try:
        async with asyncio.timeout(timeout):
            # asyncio's own handshake timeout a little later than ours: ours decides.
            reader, writer = await _connect(host, port, max(timeout, 0.0) + 1.0)
            try:
                tls_der = _peer_certificate(writer)
                hello, nonce = sigauth.make_hello(local.current_trust(), tls_der)
                writer.write(encode_frame(KIND_HELLO, hello))
                await writer.drain()
                kind, body = await read_frame(reader)
                if kind == KIND_ERROR:
                    raise _unauthenticated_refusal(body)
                if kind != KIND_PROOF:
                    raise FrameError("expected a proof", code="signaling-protocol")
                sigauth.check_proof(
                    body,
                    local=local,
                    expected_device=peer_device_id,
                    nonce=nonce,
                    tls_cert_der=tls_der,
                    now=time.time(),
                )
                writer.write(encode_frame(KIND_OFFER, envelope))
                await writer.drain()
                kind, body = await read_frame(reader)
            finally:
                await _finish(writer)
    except TimeoutError:
        raise TransportError("no answer from the peer in time", code="signaling-timeout") from None
    except asyncio.IncompleteReadError:
        raise TransportError(
            "peer closed signaling without answering", code="signaling-closed"
        ) from None
    except ssl.SSLError as exc:  # after the handshake: a broken TLS record
        raise TransportError(
            f"signaling TLS failed: {exc.reason or type(exc).__name__}", code="signaling-tls"
        ) from exc
    except OSError as exc:  # after connecting: reset by the peer
        raise TransportError(
            f"lost the peer's signaling connection: {exc.strerror or exc}",
            code="signaling-closed",
        ) from exc
    if kind == KIND_ERROR:  # after the proof: this TLS session is the device's own
        code, message = decode_error(body)
        raise PeerRefusedError(f"peer refused: {message}", peer_code=code)
    if kind != KIND_ANSWER:
        raise FrameError("expected an answer", code="signaling-protocol")
    return body


def _peer_certificate(writer: asyncio.StreamWriter) -> bytes:
    """The listener's TLS certificate (DER), which its proof must name."""
    ssl_object = writer.get_extra_info("ssl_object")
    der = None if ssl_object is None else ssl_object.getpeercert(binary_form=True)
    if not der:
        raise sigauth.SignalingAuthError("the listener presented no TLS certificate")
    return bytes(der)


def _unauthenticated_refusal(body: bytes) -> TransportError:
    """An error frame before the proof: anyone could have sent it, so it decides nothing."""
    code, _message = decode_error(body)
    log.info("unauthenticated signaling refusal peer_code=%s", code)
    return TransportError(
        "the listener refused before proving it is the device", code="signaling-refused"
    )


async def _connect(
    host: str,
    port: int,
    handshake_timeout: float,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """TCP, then the TLS handshake; TransportError signaling-unreachable or signaling-tls."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        raise TransportError(
            f"cannot reach the peer's signaling port: {exc.strerror or exc}",
            code="signaling-unreachable",
        ) from exc
    try:
        # The server speaks only after our ClientHello, so nothing is buffered before the
        # upgrade. No SNI: the server has no name, and a name would tell observers one.
        await writer.start_tls(
            client_context(), server_hostname="", ssl_handshake_timeout=handshake_timeout
        )
    except (ssl.SSLError, OSError) as exc:
        writer.close()
        reason = exc.reason if isinstance(exc, ssl.SSLError) else None
        raise TransportError(
            f"signaling TLS handshake failed: {reason or exc.strerror or type(exc).__name__}",
            code="signaling-tls",
        ) from exc
    return reader, writer


def lan_signal(
    resolve: Callable[[str], Awaitable[tuple[str, int]]],
    local: LocalIdentity,
) -> Callable[[str, bytes, float], Awaitable[bytes]]:
    """A ``WebRtcDialer`` signal function: ``resolve`` maps a device id to its signaling address."""

    async def signal(peer_device_id: str, offer: bytes, deadline: float) -> bytes:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline):
                host, port = await resolve(peer_device_id)
        except TimeoutError:
            raise TransportError(
                "peer address not found in time", code="signaling-timeout"
            ) from None
        return await send_offer(
            host,
            port,
            offer,
            local=local,
            peer_device_id=peer_device_id,
            timeout=max(0.0, deadline - loop.time()),
        )

    return signal
