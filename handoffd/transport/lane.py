"""The LAN lane: TLS 1.3 over TCP straight between two devices, for bulk data at line rate.

The TLS, the certificate checks (account CA as the only root, then
``identity.verify_device_cert``: account, device id ↔ key, CRL) and the hello are the
relay's (``RelayChannel.establish`` over a TCP ``ByteStream`` instead of the server's
pipe): one implementation for both. The dialer (the handoff's sender) is the TLS client
and names the device it expects; the listener (the target) learns its peer from the
certificate and then redeems the single-use token the sender presents as its first frame
(``handoffd.transport.lanetoken``): bound to the handoff and both device ids, issued by
the target inside the already-authenticated exchange together with its address and port.

The listener is guarded like the signaling port (``handoffd.netguard``: caps per source
address and in all, counted from accept) and closes every connection that has not
completed mutual TLS, the peer checks and the token within ``handshake_timeout``; each
refusal is reported (``on_refused(code)``) and nothing is sent on a refused connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from handoffd import identity, netguard
from handoffd.errors import HandoffError, TransportError
from handoffd.transport.base import PATH_LANE, Channel, Dialer, LocalIdentity, PeerAuthError
from handoffd.transport.lanetoken import LaneTicket, LaneTokens, encode_first
from handoffd.transport.relay import CLOSE_TIMEOUT, RelayChannel, RelayOptions

logger = logging.getLogger("handoffd.transport.lane")

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "LaneDialer",
    "LaneOffer",
    "LaneServer",
    "TcpStream",
    "usable_hosts",
]

HANDSHAKE_TIMEOUT = 5.0
"""TCP accept to a checked token: a connection that takes longer is closed."""
READ_SIZE = 1024 * 1024
STREAM_LIMIT = 4 * 1024 * 1024
SOCKET_BUFFER = 4 * 1024 * 1024
MAX_HOSTS = 8
MAX_CONNECTIONS = 32
MAX_PER_ADDRESS = 4


class TcpStream:
    """A ``ByteStream`` over one TCP connection (what ``RelayChannel`` runs TLS over)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._error: TransportError | None = None
        self._closed = False
        self.stall_timeout = 60.0
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)

    @property
    def error(self) -> HandoffError | None:
        """Why the stream ended (a reset, a broken pipe), if it did."""
        return self._error

    def _lost(self, exc: OSError) -> TransportError:
        if self._error is None:
            self._error = TransportError(
                f"the lane connection broke: {exc.strerror or type(exc).__name__}",
                code="lane-lost",
            )
        return self._error

    async def send(self, data: bytes) -> None:
        """Write ``data``, waiting while the kernel's send buffer is full."""
        if self._closed:
            raise TransportError("the lane connection is closed", code="channel-closed")
        try:
            self._writer.write(data)
            await self._writer.drain()
        except OSError as exc:
            raise self._lost(exc) from None

    async def recv(self) -> bytes | None:
        """What arrived (up to 1 MiB), or None at the end."""
        try:
            data = await self._reader.read(READ_SIZE)
        except OSError as exc:
            self._lost(exc)
            return None
        return data or None

    async def close(self) -> None:
        """Close the connection (idempotent, bounded)."""
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._writer.wait_closed()


def usable_hosts(hosts: Sequence[str]) -> list[str]:
    """The IP literals among ``hosts`` (peer-supplied), deduplicated, at most MAX_HOSTS."""
    out: list[str] = []
    for host in hosts:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            continue
        if ip.is_multicast or ip.is_unspecified or str(ip) in out:
            continue
        out.append(str(ip))
    return out[:MAX_HOSTS]


@dataclass(frozen=True, slots=True)
class LaneOffer:
    """Where the target's lane listens and the token it issued (from its ``lane`` message)."""

    handoff_id: str
    hosts: tuple[str, ...]
    port: int
    token: bytes


class LaneDialer(Dialer):
    """Dials the lane one target offered for one handoff (TLS client, expects that target)."""

    name = "lane"

    def __init__(
        self,
        local: LocalIdentity,
        offer: LaneOffer,
        *,
        options: RelayOptions | None = None,
        connect_timeout: float = 2.0,
    ) -> None:
        self._local = local
        self._offer = offer
        self._options = options or RelayOptions()
        self._connect_timeout = connect_timeout

    async def dial(self, peer_device_id: str, *, deadline: float) -> Channel:
        """TCP to each offered address in turn, then TLS, the peer check and the token.

        TransportError ``lane-unreachable`` (no address answered), ``connect-timeout``;
        PeerAuthError (not the expected device) or PeerRefusedError (the target refused
        us, e.g. ``lane-token-reused``).
        """
        loop = asyncio.get_running_loop()
        offer = self._offer
        last = "no usable address offered"
        for host in usable_hosts(offer.hosts):
            left = deadline - loop.time()
            if left <= 0:
                raise TransportError(
                    "the lane took longer than the deadline", code="connect-timeout"
                )
            try:
                async with asyncio.timeout(min(left, self._connect_timeout)):
                    reader, writer = await asyncio.open_connection(
                        host, offer.port, limit=STREAM_LIMIT
                    )
            except (OSError, TimeoutError) as exc:
                last = f"{host}: {getattr(exc, 'strerror', None) or type(exc).__name__}"
                logger.info("lane address did not answer host=%s", host)
                continue
            logger.info(
                "lane TCP connected host=%s tcp_ms=%.0f",
                host,
                (loop.time() - deadline + left) * 1000,
            )
            stream = TcpStream(reader, writer)
            stream.stall_timeout = self._options.send_stall_timeout
            ticket = LaneTicket(offer.handoff_id, peer_device_id, offer.token)
            return await RelayChannel.establish(
                stream,
                self._local,
                server_side=False,
                expected_peer=peer_device_id,
                deadline=deadline,
                options=self._options,
                path=PATH_LANE,
                first_frame=encode_first(ticket),
            )
        raise TransportError(f"the lane is unreachable ({last})", code="lane-unreachable")


OnLaneChannel = Callable[[RelayChannel], Awaitable[None]]


class LaneServer:
    """The target's lane listener (see the module docstring); ``close()`` is idempotent."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        local: Callable[[], LocalIdentity],
        tokens: Callable[[], LaneTokens],
        on_channel: OnLaneChannel,
        on_refused: Callable[[str], None],
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        max_per_address: int = MAX_PER_ADDRESS,
        options: RelayOptions | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._local = local
        self._tokens = tokens
        self._on_channel = on_channel
        self._on_refused = on_refused
        self._handshake_timeout = handshake_timeout
        self._options = options or RelayOptions()
        self.guard = netguard.ConnectionGuard(
            netguard.AcceptLimits(max_connections, max_per_address, handshake_timeout),
            name="lane",
            logger=logger,
        )
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int | None:
        """The bound port while listening, else None."""
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> bool:
        """Listen if not already; True when listening (a bind failure is logged, False)."""
        if self._server is not None:
            return True
        try:
            sock, *others = netguard.bind(self._host, self._port, self.guard)
            for other in others:
                other.close()
            try:
                self._server = await asyncio.start_server(
                    self._handle, sock=sock, limit=STREAM_LIMIT
                )
            except BaseException:
                sock.close()
                raise
        except OSError as exc:
            logger.warning("lane listener not started error=%s", exc.strerror)
            return False
        logger.info("lane listening lane_port=%d", self.port or 0)
        return True

    async def close(self) -> None:
        """Stop listening and end handshakes in flight (channels handed out live on)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(list(self._handlers))
        await server.wait_closed()
        logger.info("lane listener stopped")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - always a task under start_server
            writer.close()
            return
        self._handlers.add(task)
        try:
            channel = await self._establish(TcpStream(reader, writer))
        finally:
            self._handlers.discard(task)
        if channel is None:
            return
        try:
            await self._on_channel(channel)
        except Exception:
            logger.exception("lane channel handler failed")
            await channel.close()

    async def _establish(self, stream: TcpStream) -> RelayChannel | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._handshake_timeout
        try:
            local = self._local()
            tokens = self._tokens()
        except HandoffError:
            await stream.close()  # not paired (any more)
            return None
        stream.stall_timeout = self._options.send_stall_timeout

        def check(peer: identity.PeerIdentity, first: bytes) -> None:
            tokens.redeem(peer, first)

        try:
            return await RelayChannel.establish(
                stream,
                local,
                server_side=True,
                expected_peer=None,
                deadline=deadline,
                options=self._options,
                path=PATH_LANE,
                check_first=check,
            )
        except PeerAuthError as exc:
            self._refused(exc.code)
        except TransportError as exc:
            code = "lane-handshake-timeout" if exc.code == "connect-timeout" else exc.code
            self._refused(code)
        return None

    def _refused(self, code: str) -> None:
        logger.info("lane connection refused code=%s", code)
        with contextlib.suppress(Exception):
            self._on_refused(code)
