"""The transfer protocol as two sans-IO state machines: sender and receiver.

No sockets, no asyncio, no clock reads: an adapter feeds the peer's messages
and the time in, calls the methods below when its own work is done, drains
``outgoing()`` (messages to send, in order) and ``events()`` (what it must do
or report, in order), and calls ``timer(now)`` at ``next_timer()``.
Transitions are tables of ``(state, message tag) -> handler``; ``ping``,
``pong``, ``error`` and ``cancel`` are valid in every state. Any other message
with no entry for the current state, or one that breaks a rule, ends the
exchange: state ``failed``, a ``Failed`` event (blame: peer) and an ``error``
message to the peer. ``receive`` never raises for anything the peer sends.

Calls that break the adapter contract raise ``ProtocolError(code="misuse",
blame=LOCAL)``. The receiver never acknowledges bytes it has not made durable:
it emits ``WriteData``; the adapter writes, fsyncs, records a checkpoint and
only then calls ``checkpoint_done``, which queues the ``ack``.
See docs/protocol.md for the messages, tables and rules.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from handoffd.errors import Blame, ProtocolError
from handoffd.proto import codec
from handoffd.proto import messages as m

DEFAULT_WINDOW = m.DEFAULT_WINDOW
"""Default flow-control window: item bytes sent but not yet acknowledged as durable."""
PING_INTERVAL = 5.0
"""Seconds without sending anything before a ping goes out."""
IDLE_TIMEOUT = 30.0
"""Seconds without hearing from the peer before the exchange fails (``peer-timeout``)."""


# ---------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class PeerHello:
    """The peer's hello (its CRL, if any, is for the adapter to verify and gossip-merge)."""

    hello: m.Hello


@dataclass(frozen=True, slots=True)
class OfferReceived:
    """Receiver: an offer arrived; verify it, then call accept, decline or already_delivered."""

    offer: m.Offer
    manifest: m.Manifest


@dataclass(frozen=True, slots=True)
class Accepted:
    """Sender: the receiver takes these items (index -> offset it continues from)."""

    resume: Mapping[int, int]


@dataclass(frozen=True, slots=True)
class NeedData:
    """Sender: read ``length`` bytes of item ``index`` at ``offset``, then call data_ready."""

    index: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class WriteData:
    """Receiver: write these bytes; make them durable; then call checkpoint_done."""

    index: int
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class CheckpointNeeded:
    """Receiver: half the window is unacknowledged; make item ``index`` durable, call checkpoint_done."""

    index: int


@dataclass(frozen=True, slots=True)
class ItemComplete:
    """Receiver: every byte of item ``index`` arrived; make durable, hash, call item_verified."""

    index: int


@dataclass(frozen=True, slots=True)
class Commit:
    """Receiver: every item verified; move into the inbox atomically, then call committed."""


@dataclass(frozen=True, slots=True)
class Progress:
    """Bytes acknowledged (sender) or received (receiver) so far, of the total accepted."""

    done: int
    total: int


@dataclass(frozen=True, slots=True)
class Delivered:
    """The receiver holds the session in its inbox."""


@dataclass(frozen=True, slots=True)
class Resumed:
    """The app on the receiver picked the session up."""


@dataclass(frozen=True, slots=True)
class Declined:
    """The receiver refused the handoff."""

    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The handoff was given up (``by_peer`` says by whom)."""

    reason: str
    by_peer: bool


@dataclass(frozen=True, slots=True)
class Failed:
    """The exchange broke; ``blame`` says who broke it."""

    code: str
    message: str
    blame: Blame


Event = (
    PeerHello
    | OfferReceived
    | Accepted
    | NeedData
    | WriteData
    | CheckpointNeeded
    | ItemComplete
    | Commit
    | Progress
    | Delivered
    | Resumed
    | Declined
    | Cancelled
    | Failed
)


class State(enum.StrEnum):
    """States of both machines (each uses a subset; see docs/protocol.md)."""

    IDLE = "idle"
    AWAIT_OFFER = "await-offer"
    DECIDING = "deciding"
    AWAIT_ANSWER = "await-answer"
    STREAMING = "streaming"
    RECEIVING = "receiving"
    COMMITTING = "committing"
    AWAIT_DELIVERED = "await-delivered"
    DELIVERED = "delivered"
    RESUMED = "resumed"
    DECLINED = "declined"
    CANCELLED = "cancelled"
    FAILED = "failed"


TERMINAL = frozenset({State.RESUMED, State.DECLINED, State.CANCELLED, State.FAILED})


def _peer_error(code: str, message: str) -> ProtocolError:
    return ProtocolError(message, code=code, blame=Blame.PEER)


def _misuse(message: str) -> ProtocolError:
    return ProtocolError(message, code="misuse", blame=Blame.LOCAL)


Handler = Callable[[Any, Any], None]


class _Core:
    """What both machines share: queues, hello, ping/idle timers, errors, cancel."""

    TABLE: ClassVar[Mapping[tuple[State, str], Handler]] = {}

    def __init__(self, hello: m.Hello, *, now: float, window: int) -> None:
        if not m.MIN_WINDOW <= window <= m.MAX_WINDOW:
            raise ValueError(f"bad window {window}")
        self.state = State.IDLE
        self.handoff_id = ""
        self.peer_hello: m.Hello | None = None
        self._window = window
        self._hello = dataclasses.replace(hello, window=window)
        self._out: list[m.Message] = []
        self._events: list[Event] = []
        self._last_rx = now
        self._last_tx = now
        self._pings = 0

    # -------------------------------------------------------- adapter API

    def outgoing(self) -> list[m.Message]:
        """Messages to send now, in order (drains the queue)."""
        out, self._out = self._out, []
        return out

    def events(self) -> list[Event]:
        """What happened and what the adapter must do, in order (drains the queue)."""
        ev, self._events = self._events, []
        return ev

    @property
    def finished(self) -> bool:
        """True once the exchange reached a terminal state (delivered is not one: resumed may follow)."""
        return self.state in TERMINAL

    def receive(self, msg: m.Message, now: float) -> None:
        """Feed one decoded message from the peer; never raises for what the peer sent."""
        tag = codec.tag_of(msg)
        self._last_rx = now
        if isinstance(msg, m.Ping):
            self._send(m.Pong(nonce=msg.nonce), now)
            return
        if isinstance(msg, m.Pong) or self.finished:
            return
        try:
            if isinstance(msg, m.Error):
                self._fail(msg.code, f"peer reported: {msg.message}", Blame.PEER, notify=False)
            elif isinstance(msg, m.Cancel):
                self._on_cancel(msg)
            else:
                handler = self.TABLE.get((self.state, tag))
                if handler is None:
                    raise _peer_error(
                        "unexpected-message", f"{tag} is not valid in state {self.state}"
                    )
                if self.peer_hello is None and tag != "hello":
                    raise _peer_error("hello-first", f"{tag} before hello")
                handler(self, msg)
        except ProtocolError as exc:
            self.protocol_error(exc, now)

    def receive_bytes(self, data: bytes, now: float) -> None:
        """Decode and feed one message; an undecodable one fails the exchange."""
        try:
            msg = m.decode(data, max_size=m.WIRE_MAX)
        except ProtocolError as exc:
            self._last_rx = now
            if not self.finished:
                self.protocol_error(exc, now)
            return
        self.receive(msg, now)

    def protocol_error(self, exc: ProtocolError, now: float | None = None) -> None:
        """Fail with ``exc`` and tell the peer why (an ``error`` message)."""
        self._fail(exc.code, exc.message, exc.blame, notify=True, now=now)

    def cancel(self, reason: str, now: float) -> None:
        """Give the handoff up and tell the peer (no-op once delivered or finished)."""
        if self.finished or self.state == State.DELIVERED:
            return
        self._send(m.Cancel(handoff_id=self.handoff_id, reason=reason[:64]), now)
        self.state = State.CANCELLED
        self._events.append(Cancelled(reason=reason, by_peer=False))

    def next_timer(self) -> float | None:
        """When ``timer`` should next be called (None once finished)."""
        if self.finished:
            return None
        return min(self._last_tx + PING_INTERVAL, self._last_rx + IDLE_TIMEOUT)

    def timer(self, now: float) -> None:
        """Send a keepalive when we were quiet; fail (peer-timeout) when the peer was."""
        if self.finished:
            return
        if now - self._last_rx >= IDLE_TIMEOUT:
            self._fail("peer-timeout", "the peer went silent", Blame.PEER, notify=False)
            return
        if now - self._last_tx >= PING_INTERVAL:
            self._pings += 1
            self._send(m.Ping(nonce=self._pings), now)

    # -------------------------------------------------------- internals

    def _send(self, msg: m.Message, now: float | None = None) -> None:
        self._out.append(msg)
        if now is not None:
            self._last_tx = now

    def _fail(
        self, code: str, message: str, blame: Blame, *, notify: bool, now: float | None = None
    ) -> None:
        if self.finished:
            return
        if notify:
            self._send(m.Error(code=code[:64], message=message[:1024]), now)
        self.state = State.FAILED
        self._events.append(Failed(code=code, message=message, blame=blame))

    def _check_id(self, handoff_id: str) -> None:
        if handoff_id != self.handoff_id:
            raise _peer_error("wrong-handoff", "message is for another handoff")

    def _on_cancel(self, msg: m.Cancel) -> None:
        if self.state == State.DELIVERED:
            return  # too late: the receiver has committed it
        if self.handoff_id:
            self._check_id(msg.handoff_id)
        self.state = State.CANCELLED
        self._events.append(Cancelled(reason=msg.reason, by_peer=True))

    def _on_hello(self, msg: m.Hello) -> None:
        if self.peer_hello is not None:
            raise _peer_error("duplicate-hello", "hello sent twice")
        if msg.version != m.PROTOCOL_VERSION:
            raise _peer_error("version-mismatch", f"peer speaks version {msg.version}")
        self.peer_hello = msg
        # Both sides keep to the smaller window (the receiver's Accept confirms it).
        self._window = min(self._window, msg.window)
        self._events.append(PeerHello(hello=msg))


# ---------------------------------------------------------------- sender


class SenderCore(_Core):
    """The sending side of one handoff over one connection."""

    def __init__(
        self,
        hello: m.Hello,
        offer: m.Offer,
        manifest: m.Manifest,
        *,
        now: float,
        window: int = DEFAULT_WINDOW,
        chunk: int = m.MAX_CHUNK,
    ) -> None:
        super().__init__(hello, now=now, window=window)
        if not 1 <= chunk <= m.MAX_CHUNK:
            raise ValueError(f"bad chunk {chunk}")
        if offer.manifest != codec.encode(manifest):
            raise _misuse("the offer does not carry this manifest")
        self.handoff_id = manifest.handoff_id
        self.manifest = manifest
        self._offer = codec.encode(offer)
        if len(self._offer) > m.MAX_OFFER:
            raise _misuse(f"offer of {len(self._offer)} bytes exceeds {m.MAX_OFFER}")
        self._sizes = {item.index: item.size for item in manifest.items}
        self._chunk = chunk
        self._order: list[int] = []
        self.acked: dict[int, int] = {}
        """Per accepted item: bytes the receiver acknowledged as durable."""
        self._requested: dict[int, int] = {}
        self._sent: dict[int, int] = {}
        self._pending: collections.deque[NeedData] = collections.deque()
        self.sent_bytes = 0
        """Item bytes sent as data on this connection."""

    def start(self, now: float) -> None:
        """Queue hello and the signed offer (in parts)."""
        if self.state != State.IDLE:
            return
        self._send(self._hello, now)
        parts = [self._offer[i : i + m.MAX_CHUNK] for i in range(0, len(self._offer), m.MAX_CHUNK)]
        for seq, part in enumerate(parts):
            self._send(
                m.OfferPart(handoff_id=self.handoff_id, seq=seq, count=len(parts), data=part), now
            )
        self.state = State.AWAIT_ANSWER

    @property
    def total(self) -> int:
        """Bytes of the accepted items."""
        return sum(self._sizes[i] for i in self._order)

    @property
    def done(self) -> int:
        """Bytes acknowledged by the receiver (including what it held before)."""
        return sum(self.acked.values())

    def data_ready(self, index: int, offset: int, data: bytes, now: float) -> None:
        """The bytes the oldest outstanding NeedData asked for (exactly those, in order)."""
        if self.state != State.STREAMING:
            return
        want = self._pending[0] if self._pending else None
        if want != NeedData(index=index, offset=offset, length=len(data)):
            raise _misuse(f"data_ready({index}, {offset}, {len(data)} bytes) but asked {want}")
        self._pending.popleft()
        self._send(m.Data(handoff_id=self.handoff_id, index=index, offset=offset, data=data), now)
        self._sent[index] = offset + len(data)
        self.sent_bytes += len(data)

    def _pump(self) -> None:
        room = self._window - sum(self._requested[i] - self.acked[i] for i in self._order)
        for index in self._order:
            size = self._sizes[index]
            while room > 0 and self._requested[index] < size:
                offset = self._requested[index]
                need = NeedData(
                    index=index, offset=offset, length=min(self._chunk, size - offset, room)
                )
                self._events.append(need)
                self._pending.append(need)
                self._requested[index] = offset + need.length
                room -= need.length
            if self._requested[index] < size:
                return

    def _on_accept(self, msg: m.Accept) -> None:
        self._check_id(msg.handoff_id)
        resume: dict[int, int] = {}
        for r in msg.items:
            if r.index not in self._sizes or r.index in resume:
                raise _peer_error("accept-bad-item", f"accept names item {r.index} wrongly")
            if r.offset > self._sizes[r.index]:
                raise _peer_error("accept-bad-offset", f"resume offset {r.offset} is out of range")
            resume[r.index] = r.offset
        self._window = min(self._window, msg.window)
        self._order = sorted(resume)
        self.acked = dict(resume)
        self._requested = dict(resume)
        self._sent = dict(resume)
        self._events.append(Accepted(resume=dict(resume)))
        self._events.append(Progress(done=self.done, total=self.total))
        if self.done == self.total:
            self.state = State.AWAIT_DELIVERED
            return
        self.state = State.STREAMING
        self._pump()

    def _on_decline(self, msg: m.Decline) -> None:
        self._check_id(msg.handoff_id)
        self.state = State.DECLINED
        self._events.append(Declined(reason=msg.reason, message=msg.message))

    def _on_ack(self, msg: m.Ack) -> None:
        self._check_id(msg.handoff_id)
        if msg.index not in self.acked:
            raise _peer_error("ack-bad-item", f"ack for item {msg.index}, not accepted")
        if msg.offset > self._sent[msg.index]:
            raise _peer_error("ack-beyond-sent", f"ack for item {msg.index} beyond what was sent")
        if msg.offset <= self.acked[msg.index]:
            return  # acks only move forward: an old or duplicate one says nothing new
        self.acked[msg.index] = msg.offset
        self._events.append(Progress(done=self.done, total=self.total))
        if self.done == self.total:
            self.state = State.AWAIT_DELIVERED
        elif self.state == State.STREAMING:
            self._pump()

    def _on_delivered(self, msg: m.Delivered) -> None:
        self._check_id(msg.handoff_id)
        if self.state == State.DELIVERED:
            return
        if self.state == State.STREAMING:
            raise _peer_error("delivered-early", "delivered before every byte was acknowledged")
        # From await-answer: the receiver already had this handoff (a duplicate).
        self.state = State.DELIVERED
        self._events.append(Delivered())

    def _on_resumed(self, msg: m.Resumed) -> None:
        self._check_id(msg.handoff_id)
        self.state = State.RESUMED
        self._events.append(Resumed())

    TABLE: ClassVar[Mapping[tuple[State, str], Handler]] = {
        (State.AWAIT_ANSWER, "hello"): _Core._on_hello,
        (State.AWAIT_ANSWER, "accept"): _on_accept,
        (State.AWAIT_ANSWER, "decline"): _on_decline,
        (State.AWAIT_ANSWER, "delivered"): _on_delivered,
        (State.STREAMING, "ack"): _on_ack,
        (State.STREAMING, "delivered"): _on_delivered,
        (State.AWAIT_DELIVERED, "ack"): _on_ack,
        (State.AWAIT_DELIVERED, "delivered"): _on_delivered,
        (State.DELIVERED, "ack"): _on_ack,
        (State.DELIVERED, "delivered"): _on_delivered,
        (State.DELIVERED, "resumed"): _on_resumed,
    }


# ---------------------------------------------------------------- receiver


class ReceiverCore(_Core):
    """The receiving side of one handoff over one connection."""

    def __init__(self, hello: m.Hello, *, now: float, window: int = DEFAULT_WINDOW) -> None:
        super().__init__(hello, now=now, window=window)
        self.manifest: m.Manifest | None = None
        self._parts: list[bytes] = []
        self._parts_count = 0
        self._sizes: dict[int, int] = {}
        self.expected: dict[int, int] = {}
        """Per accepted item: bytes received so far (the next offset expected)."""
        self.durable: dict[int, int] = {}
        """Per accepted item: bytes acknowledged as durable."""
        self._unacked = 0
        self._checkpoint_asked = False
        self._complete: set[int] = set()
        self._verified: set[int] = set()
        self.received_bytes = 0
        """Item bytes received as new data on this connection."""

    def start(self, now: float) -> None:
        """Queue our hello."""
        if self.state != State.IDLE:
            return
        self._send(self._hello, now)
        self.state = State.AWAIT_OFFER

    @property
    def total(self) -> int:
        """Bytes of the accepted items."""
        return sum(self._sizes.values())

    @property
    def done(self) -> int:
        """Bytes received so far (including what was held before)."""
        return sum(self.expected.values())

    def _on_offer_part(self, msg: m.OfferPart) -> None:
        if not self._parts:
            self.handoff_id = msg.handoff_id
        elif msg.handoff_id != self.handoff_id or msg.count != self._parts_count:
            raise _peer_error("offer-part-mismatch", "offer parts disagree")
        if msg.seq != len(self._parts) or msg.seq >= msg.count:
            raise _peer_error(
                "offer-part-order", f"offer part {msg.seq} of {msg.count} out of order"
            )
        self._parts_count = msg.count
        self._parts.append(msg.data)
        if sum(map(len, self._parts)) > m.MAX_OFFER:
            raise _peer_error("offer-too-large", "offer exceeds its bound")
        if len(self._parts) == msg.count:
            raw, self._parts = b"".join(self._parts), []
            self._on_offer(raw)

    def _on_offer(self, raw: bytes) -> None:
        try:
            offer = codec.decode_as(raw, m.Offer, max_size=m.MAX_OFFER)
            manifest = codec.decode_as(offer.manifest, m.Manifest, max_size=m.MAX_OFFER)
        except ProtocolError as exc:
            raise _peer_error("offer-malformed", f"offer does not decode: {exc.code}") from exc
        if manifest.handoff_id != self.handoff_id:
            raise _peer_error("offer-wrong-handoff", "offer parts name another handoff")
        indexes = {item.index for item in manifest.items}
        if len(indexes) != len(manifest.items):
            raise _peer_error("manifest-bad-index", "manifest item indexes must be unique")
        self.manifest = manifest
        self.state = State.DECIDING
        self._events.append(OfferReceived(offer=offer, manifest=manifest))

    def accept(self, resume: Mapping[int, int], now: float) -> None:
        """Take the items in ``resume`` (index -> bytes durably held) and ask for the rest."""
        if self.finished:
            return  # cancelled (or failed) while the adapter was deciding
        if self.state != State.DECIDING or self.manifest is None:
            raise _misuse(f"accept in state {self.state}")
        sizes = {item.index: item.size for item in self.manifest.items}
        if not resume or any(i not in sizes or not 0 <= o <= sizes[i] for i, o in resume.items()):
            raise _misuse(f"bad resume offsets {dict(resume)}")
        self._sizes = {i: sizes[i] for i in sorted(resume)}
        self.expected = dict(resume)
        self.durable = dict(resume)
        items = tuple(m.Resume(index=i, offset=o) for i, o in sorted(resume.items()))
        self._send(m.Accept(handoff_id=self.handoff_id, items=items, window=self._window), now)
        self.state = State.RECEIVING
        self._events.append(Progress(done=self.done, total=self.total))
        for index in self._sizes:
            if self.expected[index] == self._sizes[index]:
                self._complete.add(index)
                self._events.append(ItemComplete(index=index))

    def decline(self, reason: str, message: str, now: float) -> None:
        """Refuse the offer with a reason code (≤ 64 characters)."""
        if self.finished:
            return
        if self.state != State.DECIDING:
            raise _misuse(f"decline in state {self.state}")
        self._send(
            m.Decline(handoff_id=self.handoff_id, reason=reason[:64], message=message[:1024]), now
        )
        self.state = State.DECLINED
        self._events.append(Declined(reason=reason, message=message))

    def already_delivered(self, now: float) -> None:
        """The offer is for a handoff already in the inbox: say delivered, store nothing."""
        if self.finished:
            return
        if self.state != State.DECIDING:
            raise _misuse(f"already_delivered in state {self.state}")
        self._send(m.Delivered(handoff_id=self.handoff_id), now)
        self.state = State.DELIVERED
        self._events.append(Delivered())

    def _on_data(self, msg: m.Data) -> None:
        self._check_id(msg.handoff_id)
        index = msg.index
        if index not in self._sizes:
            raise _peer_error("data-bad-item", f"data for item {index}, not accepted")
        expected = self.expected[index]
        end = msg.offset + len(msg.data)
        if end <= expected:
            return  # bytes we already have: a duplicate is harmless
        if msg.offset != expected:
            code = "data-gap" if msg.offset > expected else "data-overlap"
            raise _peer_error(code, f"item {index}: data at {msg.offset}, expected {expected}")
        if end > self._sizes[index]:
            raise _peer_error("data-overflow", f"item {index}: more bytes than the manifest says")
        self._unacked += len(msg.data)
        if self._unacked > self._window:
            raise _peer_error("flow-control", "more unacknowledged bytes than the window")
        self.expected[index] = end
        self.received_bytes += len(msg.data)
        self._events.append(WriteData(index=index, offset=msg.offset, data=msg.data))
        self._events.append(Progress(done=self.done, total=self.total))
        if end == self._sizes[index]:
            self._complete.add(index)
            self._events.append(ItemComplete(index=index))
        elif self._unacked >= self._window // 2 and not self._checkpoint_asked:
            # Without acks the sender stops at a full window: never let it get there.
            self._checkpoint_asked = True
            self._events.append(CheckpointNeeded(index=index))

    def checkpoint_done(self, index: int, offset: int, now: float) -> None:
        """Bytes of item ``index`` up to ``offset`` are durable: acknowledge them."""
        if self.finished:
            return
        if index not in self._sizes or offset > self.expected[index]:
            raise _misuse(f"checkpoint of item {index} at {offset} beyond what was received")
        if offset <= self.durable[index]:
            return
        self._unacked -= offset - self.durable[index]
        self.durable[index] = offset
        if self._unacked < self._window // 2:
            self._checkpoint_asked = False
        self._send(m.Ack(handoff_id=self.handoff_id, index=index, offset=offset), now)

    def item_verified(self, index: int, ok: bool, now: float) -> None:
        """The adapter hashed item ``index``: ``ok`` if it matches the manifest."""
        if self.finished:
            return
        if index not in self._complete:
            raise _misuse(f"item {index} verified before it was complete")
        if not ok:
            self._fail(
                "hash-mismatch",
                f"item {index} does not match its hash",
                Blame.PEER,
                notify=True,
                now=now,
            )
            return
        self._verified.add(index)
        if self.state == State.RECEIVING and self._verified >= self._sizes.keys():
            self.state = State.COMMITTING
            self._events.append(Commit())

    def committed(self, now: float) -> None:
        """The session is in the inbox: tell the sender (delivered)."""
        if self.state != State.COMMITTING:
            return
        self._send(m.Delivered(handoff_id=self.handoff_id), now)
        self.state = State.DELIVERED
        self._events.append(Delivered())

    def resumed(self, now: float) -> None:
        """The app confirmed it picked the session up: tell the sender."""
        if self.state != State.DELIVERED:
            return
        self._send(m.Resumed(handoff_id=self.handoff_id), now)
        self.state = State.RESUMED
        self._events.append(Resumed())

    TABLE: ClassVar[Mapping[tuple[State, str], Handler]] = {
        (State.AWAIT_OFFER, "hello"): _Core._on_hello,
        (State.AWAIT_OFFER, "offer-part"): _on_offer_part,
        (State.RECEIVING, "data"): _on_data,
        (State.COMMITTING, "data"): _on_data,
        (State.DELIVERED, "data"): _on_data,
    }
