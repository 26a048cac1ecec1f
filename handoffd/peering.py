"""How the engine reaches a peer: the LAN first, else through the server; direct raced against relay.

- ``ServerPath``: the daemon's WebSocket to its server (``ServerLink``):
  presence, signaling envelopes forwarded by the server (request/answer
  pairs, ``SignalFrame``), relay offers (a ``RelayListener``), and the
  STUN/TURN servers the server hands out.
- ``DirectDialer``: WebRTC with the offer carried over LAN signaling to a
  sighted or configured address, else through the server; the DTLS
  fingerprints stay bound in the signed envelopes either way, so the server
  only forwards what it cannot change unnoticed.
- ``connector(...)``: ``[direct, relay]`` in a ``Connector`` (direct gets a
  head start; the first authenticated channel wins).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from handoffd.errors import HandoffError, ServerError, TransportError
from handoffd.serverlink import RelayTicket, ServerClient, ServerLink
from handoffd.tasks import TaskSet
from handoffd.transport import sigframes, signaling, webrtc
from handoffd.transport.base import (
    Channel,
    Dialer,
    LocalIdentity,
    PeerAuthError,
    PeerRefusedError,
)
from handoffd.transport.connector import Connector
from handoffd.transport.relay import RelayChannel
from handoffd.transport.relaydial import RelayDialer, RelayListener

logger = logging.getLogger("handoffd.peering")

REF_LEN = 16
MAX_PENDING = 64
"""Requests through the server waiting for an answer, at most (more: refused locally)."""
MAX_INCOMING = 64
"""Requests from peers through the server being answered at once (more: refused)."""
ANSWER_TIMEOUT = 20.0
ICE_RETRY = 60.0

OnRequest = Callable[[bytes], Awaitable[bytes]]
"""Given a request envelope from a peer, the answer envelope, or raise HandoffError (code sent back)."""


# ---------------------------------------------------------------- frames through the server


@dataclass(frozen=True, slots=True)
class SignalFrame:
    """One message of a request/answer pair forwarded by the server.

    Wire: a 16-byte request reference, then one LAN signaling frame (length,
    kind: 1 request/offer, 2 answer, 3 error; body as on the LAN).
    """

    ref: bytes
    kind: int
    body: bytes

    def encode(self) -> bytes:
        """The bytes to forward."""
        return self.ref + signaling.encode_frame(self.kind, self.body)

    @classmethod
    def error(cls, ref: bytes, code: str, message: str) -> SignalFrame:
        """An error answer (code kebab-case, message short and printable)."""
        return cls(ref=ref, kind=signaling.KIND_ERROR, body=sigframes.error_body(code, message))

    @classmethod
    def decode(cls, data: bytes) -> SignalFrame:
        """Strictly parse; TransportError(signal-malformed) on anything else."""
        try:
            kind, body = sigframes.decode_frame(data[REF_LEN:])
        except sigframes.FrameError as exc:
            raise TransportError(
                f"forwarded signal: {exc.message}", code="signal-malformed"
            ) from None
        if kind not in (signaling.KIND_OFFER, signaling.KIND_ANSWER, signaling.KIND_ERROR):
            raise TransportError("forwarded signal has an unknown kind", code="signal-malformed")
        return cls(ref=data[:REF_LEN], kind=kind, body=body)


# ---------------------------------------------------------------- the server path


class ServerPath:
    """The daemon's live connection to its server, and what travels over it.

    ``on_request`` answers envelopes peers send through the server (offers,
    resume notices); ``on_channel`` takes authenticated relay channels peers
    open to us. ``close()`` is idempotent and stops everything this object
    started.
    """

    def __init__(
        self,
        *,
        client: ServerClient,
        local: LocalIdentity,
        on_request: OnRequest,
        on_channel: Callable[[RelayChannel], Awaitable[None]],
        on_presence: Callable[[frozenset[str]], None],
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.local = local
        self._on_request = on_request
        self._on_presence = on_presence
        self._on_refused = on_refused
        self.listener = RelayListener(local, client, on_channel, on_error=self._relay_failed)
        self.link: ServerLink = client.connect(
            on_presence=self._presence,
            on_signal=self._signal,
            on_error=self._error,
            on_relay=self.listener.on_relay,
        )
        self._pending: dict[bytes, tuple[str, asyncio.Future[SignalFrame]]] = {}
        self._tasks = TaskSet("server signaling")
        self._ice: tuple[webrtc.IceServer, ...] = ()
        self._ice_until = 0.0
        self._ice_expires = 0.0
        self._ice_lock = asyncio.Lock()
        self._closed = False

    @property
    def connected(self) -> bool:
        """True while authenticated to the server."""
        return self.link.connected

    @property
    def online(self) -> frozenset[str]:
        """The account's devices the server lists online (empty while disconnected)."""
        return self.link.online if self.link.connected else frozenset()

    def reachable(self, device_id: str) -> bool:
        """True when the server can forward to ``device_id`` now."""
        return device_id in self.online

    async def start(self) -> None:
        """Start connecting (returns at once)."""
        await self.link.start()

    async def close(self) -> None:
        """Stop the link, the relay listener and every answer in flight (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for _peer, future in self._pending.values():
            if not future.done():
                future.set_exception(TransportError("server path closed", code="server-offline"))
        await self._tasks.close()
        await self.listener.close()
        await self.link.close()

    # ------------------------------------------------------------ ICE servers

    async def ice_servers(self) -> tuple[webrtc.IceServer, ...]:
        """The STUN/TURN servers the server advertises (cached; empty if none or unknown)."""
        now = time.time()
        if now < self._ice_until:
            return self._ice
        async with self._ice_lock:
            if time.time() < self._ice_until:
                return self._ice
            try:
                async with asyncio.timeout(5.0):
                    servers, expires = await self.client.ice_servers()
            except (ServerError, TimeoutError) as exc:
                logger.info("ICE servers not fetched code=%s", getattr(exc, "code", "timeout"))
                self._ice_until = time.time() + ICE_RETRY
                if now >= self._ice_expires:
                    self._ice = ()  # expired credentials are of no use
                return self._ice
            self._ice = tuple(
                webrtc.IceServer(urls=tuple(s.urls), username=s.username, credential=s.credential)
                for s in servers
            )
            now = time.time()
            self._ice_expires = float(expires)
            # Fetched again halfway through their lifetime (never more often than ICE_RETRY).
            self._ice_until = now + max(ICE_RETRY, (self._ice_expires - now) / 2)
            return self._ice

    # ------------------------------------------------------------ requests through the server

    async def request(self, peer: str, envelope: bytes, *, deadline: float) -> bytes:
        """Forward ``envelope`` to ``peer`` through the server; its answer envelope.

        Raises PeerRefusedError (the peer answered with an error), or
        TransportError: ``server-offline``, ``signaling-timeout``,
        ``signal-too-large``, ``busy``.
        """
        if not self.reachable(peer):
            raise TransportError(
                "the server does not list the device online", code="server-offline"
            )
        if len(self._pending) >= MAX_PENDING:
            raise TransportError("too many requests through the server", code="busy")
        ref = secrets.token_bytes(REF_LEN)
        future: asyncio.Future[SignalFrame] = asyncio.get_running_loop().create_future()
        self._pending[ref] = (peer, future)
        try:
            async with asyncio.timeout_at(deadline):
                try:
                    await self.link.send_signal(
                        peer, SignalFrame(ref, signaling.KIND_OFFER, envelope).encode()
                    )
                except ServerError as exc:
                    raise TransportError(exc.message, code=exc.code) from None
                answer = await future
        except TimeoutError:
            raise TransportError(
                "no answer through the server in time", code="signaling-timeout"
            ) from None
        finally:
            self._pending.pop(ref, None)
        if answer.kind == signaling.KIND_ERROR:
            code, message = signaling.decode_error(answer.body)
            raise PeerRefusedError(f"peer refused: {message}", peer_code=code)
        return answer.body

    def _signal(self, sender: str, data: bytes) -> None:
        try:
            frame = SignalFrame.decode(data)
        except TransportError as exc:
            logger.info("forwarded signal dropped code=%s", exc.code, extra={"peer": sender})
            return
        if frame.kind == signaling.KIND_OFFER:
            if self._closed or len(self._tasks) >= MAX_INCOMING:
                self._spawn(self._reply(sender, SignalFrame.error(frame.ref, "busy", "busy")))
                return
            self._spawn(self._answer(sender, frame))
            return
        pending = self._pending.get(frame.ref)
        # Only the addressed device may answer (the server names the sender it authenticated).
        future = pending[1] if pending is not None and pending[0] == sender else None
        if future is None or future.done():
            logger.info("unexpected answer through the server", extra={"peer": sender})
            return
        future.set_result(frame)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if self._closed or self._tasks.closed:
            coro.close()
            return
        self._tasks.spawn(coro, "server-signal")

    async def _answer(self, sender: str, frame: SignalFrame) -> None:
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT):
                answer = await self._on_request(frame.body)
            reply = SignalFrame(frame.ref, signaling.KIND_ANSWER, answer)
        except TimeoutError:
            reply = SignalFrame.error(frame.ref, "answer-timeout", "could not answer in time")
        except HandoffError as exc:
            logger.info("offer refused: %s", exc.code, extra={"peer": sender})
            reply = SignalFrame.error(frame.ref, exc.code, exc.message)
        except Exception:  # one broken request must not stop the path
            logger.exception("request through the server failed")
            reply = SignalFrame.error(frame.ref, "internal", "internal error")
        await self._reply(sender, reply)

    async def _reply(self, sender: str, reply: SignalFrame) -> None:
        try:
            await self.link.send_signal(sender, reply.encode())
        except (ServerError, HandoffError) as exc:
            logger.info("answer through the server not sent code=%s", exc.code)

    def _relay_failed(self, ticket: RelayTicket, error: HandoffError) -> None:
        if isinstance(error, PeerAuthError) and self._on_refused is not None:
            self._on_refused(error.code)

    def _presence(self, online: frozenset[str]) -> None:
        self._on_presence(online)

    def _error(self, error: ServerError) -> None:
        logger.info("server reported code=%s", error.code)
        if error.code == "device-revoked" and self._on_refused is not None:
            self._on_refused(error.code)  # this device itself: it must know at once


# ---------------------------------------------------------------- the direct dialer


class DirectDialer(Dialer):
    """WebRTC; the offer goes over LAN signaling when the peer has an address, else via the server.

    ``options(route)`` (``"lan"`` or ``"server"``): the STUN/TURN servers only matter off the LAN, and an
    unreachable one delays candidate gathering by seconds, so LAN attempts go without.
    """

    name = "direct"

    def __init__(
        self,
        local: Callable[[], LocalIdentity],
        addresses: Callable[[str], Sequence[tuple[str, int]]],
        server: Callable[[], ServerPath | None],
        options: Callable[[str], Awaitable[webrtc.WebRtcOptions]],
    ) -> None:
        self._local = local
        self._addresses = addresses
        self._server = server
        self._options = options

    def plausible(self, peer_device_id: str) -> bool:
        """A LAN address, or the server lists the peer online."""
        server = self._server()
        return bool(self._addresses(peer_device_id)) or (
            server is not None and server.reachable(peer_device_id)
        )

    async def dial(self, peer_device_id: str, *, deadline: float) -> Channel:
        """Try each LAN address, then the server's forwarding; the first channel that opens."""
        loop = asyncio.get_running_loop()
        local = self._local()
        errors: list[HandoffError] = []
        addresses = self._addresses(peer_device_id)
        options = await self._options("lan") if addresses else None
        for host, port in addresses:

            async def lan(offer: bytes, host: str = host, port: int = port) -> bytes:
                left = max(0.1, deadline - loop.time())
                return await signaling.send_offer(
                    host, port, offer, local=local, peer_device_id=peer_device_id, timeout=left
                )

            try:
                return await webrtc.connect(
                    local=local,
                    peer_device_id=peer_device_id,
                    signal=lan,
                    deadline=deadline,
                    options=options,
                )
            except PeerRefusedError:
                raise  # the peer itself said no: another address will not change its mind
            except TransportError as exc:
                logger.info("direct attempt failed host=%s port=%d code=%s", host, port, exc.code)
                errors.append(exc)
        server = self._server()
        if server is not None and server.reachable(peer_device_id) and loop.time() < deadline:

            async def via_server(offer: bytes) -> bytes:
                return await server.request(peer_device_id, offer, deadline=deadline)

            try:
                return await webrtc.connect(
                    local=local,
                    peer_device_id=peer_device_id,
                    signal=via_server,
                    deadline=deadline,
                    options=await self._options("server"),
                )
            except PeerRefusedError:
                raise
            except TransportError as exc:
                logger.info("direct attempt via the server failed code=%s", exc.code)
                errors.append(exc)
        if errors:
            raise errors[-1]
        raise TransportError("the device is not nearby or online", code="peer-not-found")


def connector(direct: Dialer, server: ServerPath | None, *, head_start: float) -> Connector:
    """``[direct, relay]`` when the server path exists, else direct alone."""
    if server is None:
        return Connector([direct], head_start=head_start)
    relay = RelayDialer(server.local, server.client, server.link)
    return Connector([direct, relay], head_start=head_start)


async def close_quietly(thing: Any) -> None:
    """Close ``thing`` ignoring project errors (shutdown paths)."""
    with contextlib.suppress(HandoffError, OSError):
        await thing.close()


__all__ = [
    "DirectDialer",
    "ServerPath",
    "SignalFrame",
    "close_quietly",
    "connector",
]
