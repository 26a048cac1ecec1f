"""A link: one authenticated channel to a peer, reused for successive handoffs (warm).

One reader task feeds the exchange running on it; **one handoff at a time per link** (each
exchange starts with hello + offer). What arrives on an idle link (a peer's hello starting an
exchange, a ``resumed``) goes to the link's one consumer as a typed ``LinkEvent``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from handoffd import identity
from handoffd.errors import HandoffError, ProtocolError, TransportError
from handoffd.proto import codec
from handoffd.proto import messages as m
from handoffd.proto import transfer as core
from handoffd.tasks import TaskSet
from handoffd.transport.base import Channel

logger = logging.getLogger("handoffd.handoff.link")

SEND_TIMEOUT = 60.0
WINDOW = 8 * 1024 * 1024
"""The flow-control window this engine asks for (both cores; the peer's hello may lower it).

Twice the protocol's default: at line rate on the lane a 4 MiB window with an fsync per
checkpoint left the sender waiting for acknowledgements (docs/benchmarks.md)."""
# A peer may not run ahead of the window by more than this (bytes queued to one exchange).
MAX_QUEUED = 2 * WINDOW + 1024 * 1024
LANE_PEEK = 1024
"""A ``lane`` message is far smaller than this."""


class _Wake:
    """Queued to an exchange to wake its driver without a message (see ``ask_resumed``)."""


WAKE = _Wake()


class Exchange:
    """One handoff running on a link: the link's reader feeds it messages."""

    def __init__(self, handoff_id: str, role: str) -> None:
        self.handoff_id = handoff_id
        self.role = role
        self.queue: asyncio.Queue[bytes | _Wake | None] = asyncio.Queue()
        self.queued = 0
        self.core: core.SenderCore | core.ReceiverCore | None = None
        self.resume_asked: asyncio.Future[bool] | None = None
        """Set by ``ask_resumed``: the driver tells the peer ``resumed`` and resolves it."""
        self.on_lane: Callable[[m.Lane], None] | None = None
        """Set by a sender's driver: told of the receiver's ``lane`` message as soon as it
        arrives (the driver may be busy pushing a window into a slow channel)."""

    def feed_lane(self, data: bytes) -> None:
        """Tell ``on_lane`` if ``data`` (small: a sender only receives small messages) is a
        ``lane`` message; the core still gets it through the queue."""
        if self.on_lane is None or len(data) > LANE_PEEK or b"lane" not in data:
            return
        try:
            msg = codec.decode(data)
        except ProtocolError:
            return  # the core reports it
        if isinstance(msg, m.Lane):
            self.on_lane(msg)

    def ask_resumed(self) -> asyncio.Future[bool]:
        """Ask this exchange's driver to tell the peer the session was resumed; the future
        says whether it was sent (False: the exchange ended first)."""
        if self.resume_asked is None:
            self.resume_asked = asyncio.get_running_loop().create_future()
            self.queue.put_nowait(WAKE)
        return self.resume_asked

    def answer_resumed(self, *, sent: bool) -> None:
        """The driver's answer to ``ask_resumed`` (no-op if not asked or answered)."""
        if self.resume_asked is not None and not self.resume_asked.done():
            self.resume_asked.set_result(sent)

    def feed(self, data: bytes | None) -> bool:
        """Queue a message (None: the link closed); False if the peer outran the window."""
        if data is not None:
            self.queued += len(data)
            if self.queued > MAX_QUEUED:
                return False
        self.queue.put_nowait(data)
        return True

    async def next(self, timeout: float) -> bytes | _Wake | None:  # noqa: ASYNC109 - core's timer
        """The next message (WAKE: a request), None if the link closed; TimeoutError after
        ``timeout``."""
        async with asyncio.timeout(max(0.0, timeout)):
            data = await self.queue.get()
        if isinstance(data, bytes):
            self.queued -= len(data)
        return data


@dataclass(frozen=True, slots=True)
class IncomingExchange:
    """The peer began an exchange on an idle link: its hello is ``first``."""

    link: Link
    exchange: Exchange
    first: bytes


@dataclass(frozen=True, slots=True)
class ResumedOnLink:
    """The peer said on an idle link that it resumed ``handoff_id``."""

    link: Link
    handoff_id: str


LinkEvent = IncomingExchange | ResumedOnLink


class Link:
    """An authenticated channel to one peer, reused for successive handoffs (warm)."""

    def __init__(
        self,
        channel: Channel,
        *,
        on_event: Callable[[LinkEvent], None],
        clock: Callable[[], float],
    ) -> None:
        self.channel = channel
        self.peer_id = channel.peer.device_id
        self._on_event = on_event
        self._clock = clock
        self._replies = TaskSet(f"link-{self.peer_id[:8]}")
        self.exchange: Exchange | None = None
        self.last_used = self._clock()
        self._reader: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self.reserved = False
        """Taken by a handoff about to ``begin`` a sending exchange on it: no other may take it."""
        self.used = False
        """True once an exchange began on it (ours, or the peer's hello): until then it is new."""
        self._heard = asyncio.Event()
        self.error: TransportError | None = None
        """Why the channel ended under the reader (None: closed, or not yet)."""

    @property
    def closed(self) -> bool:
        """True once the link (or its channel) closed."""
        return self._closed.is_set() or self.channel.closed

    @property
    def busy(self) -> bool:
        """True while an exchange runs (including a sender waiting for ``resumed``)."""
        ex = self.exchange
        return self.reserved or (ex is not None and (ex.core is None or not ex.core.finished))

    @property
    def lingering(self) -> bool:
        """True while only a delivered sender waits for ``resumed`` (a new handoff may take over)."""
        ex = self.exchange
        return (
            ex is not None
            and ex.role == "sender"
            and ex.core is not None
            and ex.core.state == core.State.DELIVERED
        )

    def take_over(self) -> None:
        """End a lingering exchange so a new one can start (its resumed comes by notice)."""
        ex = self.exchange
        if ex is not None and self.lingering:
            self.exchange = None
            ex.feed(None)

    def reserve(self) -> None:
        """Take this idle (or lingering) link for the exchange about to begin on it."""
        self.take_over()
        self.reserved = True

    def release(self) -> None:
        """Give back a reservation that was not used (idempotent)."""
        self.reserved = False

    async def probe(self, within: float) -> bool:
        """True if the peer is heard (its ``pong``, or anything else) within ``within`` seconds
        of a ``ping`` sent on this link."""
        self._heard.clear()
        try:
            async with asyncio.timeout(within):
                await self.send(m.Ping(nonce=0))
                await self._heard.wait()
        except (TimeoutError, HandoffError):
            return False
        return True

    def start(self) -> None:
        """Start reading."""
        if self._reader is None:
            self._reader = asyncio.create_task(self._read(), name=f"link-{self.peer_id[:8]}")

    async def wait_closed(self) -> None:
        """Until the link closes."""
        await self._closed.wait()

    def begin(self, handoff_id: str, role: str) -> Exchange:
        """Start an exchange (the link must be idle, or reserved for it)."""
        self.reserved = False
        if self.busy:
            raise TransportError("link is busy", code="link-busy")
        self.exchange = Exchange(handoff_id, role)
        self.used = True
        self.last_used = self._clock()
        return self.exchange

    def end(self, exchange: Exchange) -> None:
        """The exchange is over; the link is idle (warm) again."""
        if self.exchange is exchange:
            self.exchange = None
        self.last_used = self._clock()

    async def send(self, msg: m.Message) -> None:
        """Encode and send one message (timeout: a stalled channel is closed)."""
        data = codec.encode(msg)
        async with self._send_lock:
            try:
                async with asyncio.timeout(SEND_TIMEOUT):
                    await self.channel.send(data)
            except TimeoutError:
                await self.close()
                raise TransportError("send stalled", code="send-stalled") from None

    async def _read(self) -> None:
        try:
            while True:
                data = await self.channel.recv()
                self.last_used = self._clock()
                self._heard.set()
                ex = self.exchange
                if (
                    ex is not None
                    and ex.core is not None
                    and (ex.core.finished or _ready_for_next(ex, data))
                ):
                    # Over, or only waiting in delivered while a new exchange starts.
                    ex.feed(None)
                    self.exchange = ex = None
                if ex is not None:
                    ex.feed_lane(data)
                    if not ex.feed(data):
                        logger.warning("peer outran the window", extra={"peer": self.peer_id})
                        break
                    continue
                self._idle_message(data)
        except TransportError as exc:
            self.error = exc
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("link reader failed")
        finally:
            self._closed.set()
            if self.exchange is not None:
                self.exchange.feed(None)
            with contextlib.suppress(Exception):
                await self.channel.close()

    def _idle_message(self, data: bytes) -> None:
        try:
            msg = codec.decode(data)
        except ProtocolError:
            logger.info("undecodable message on an idle link", extra={"peer": self.peer_id})
            return
        if isinstance(msg, m.Hello):
            exchange = Exchange("", "receiver")
            self.exchange = exchange
            self.used = True
            self._on_event(IncomingExchange(self, exchange, data))
        elif isinstance(msg, m.Ping):
            with contextlib.suppress(HandoffError):  # closing: no reply
                self._replies.spawn(self._pong(msg.nonce), "pong")
        elif isinstance(msg, m.Resumed):
            self._on_event(ResumedOnLink(self, msg.handoff_id))

    async def _pong(self, nonce: int) -> None:
        with contextlib.suppress(HandoffError):
            await self.send(m.Pong(nonce=nonce))

    async def close(self) -> None:
        """Close the channel and stop reading (idempotent)."""
        self._closed.set()
        reader, self._reader = self._reader, None
        with contextlib.suppress(Exception):
            await self.channel.close()
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            await asyncio.wait([reader])  # our own cancellation still goes through
        if self.exchange is not None:
            self.exchange.feed(None)
        await self._replies.close()


def _ready_for_next(ex: Exchange, data: bytes) -> bool:
    """True if ``ex`` only lingers (delivered, waiting for resumed) and ``data`` starts a new one."""
    c = ex.core
    if c is None or c.state != core.State.DELIVERED or ex.role != "receiver":
        return False
    try:
        return isinstance(codec.decode(data), m.Hello)
    except ProtocolError:
        return False


def make_hello(device_id: str, trust: identity.TrustAnchor | None) -> m.Hello:
    """Our hello, carrying our CRL for gossip and the features we speak (the LAN lane)."""
    crl = None if trust is None or trust.crl is None else identity.crl_to_der(trust.crl)
    if crl is not None and len(crl) > m.MAX_CRL:
        crl = None  # too large to gossip: peers fetch it from the server instead
    return m.Hello(
        version=m.PROTOCOL_VERSION,
        device_id=device_id,
        crl_number=0 if trust is None else trust.crl_number,
        crl=crl,
        features=(m.FEATURE_LANE, m.FEATURE_LANE_EARLY),
    )


# ---------------------------------------------------------------- driving a core
