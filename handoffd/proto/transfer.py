"""The transfer protocol as two sans-IO state machines: sender and receiver.

No sockets, no asyncio, no clock reads: an adapter feeds messages and the time
in, then drains ``outgoing()`` (messages to send) and ``events()`` (what it must
do or report), and calls ``timer(now)`` at ``next_timer()``. Transitions are
tables of ``(state, message type) -> handler``; a message with no entry for
the current state is a protocol error blamed on the peer.

The receiver never acknowledges bytes it has not made durable: it emits
``WriteData``; the adapter writes, fsyncs, records a checkpoint and only then
calls ``checkpoint_done``, which queues the ``Ack``. See docs/protocol.md.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from handoffd.errors import Blame, ProtocolError
from handoffd.proto import codec
from handoffd.proto import messages as m

DEFAULT_WINDOW = 4 * 1024 * 1024
PING_INTERVAL = 5.0
IDLE_TIMEOUT = 30.0


# ---------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class PeerHello:
    """The peer's hello (its CRL, if any, is for the adapter to gossip-merge)."""

    hello: m.Hello


@dataclass(frozen=True, slots=True)
class OfferReceived:
    """Receiver: an offer arrived; verify it, then call accept, decline or already_delivered."""

    offer: m.Offer
    manifest: m.Manifest


@dataclass(frozen=True, slots=True)
class Accepted:
    """Sender: the receiver takes these items from these offsets."""

    resume: Mapping[int, int]


@dataclass(frozen=True, slots=True)
class NeedData:
    """Sender: read ``length`` bytes of item ``index`` at ``offset`` and call data_ready."""

    index: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class WriteData:
    """Receiver: write these bytes; checkpoint durably; then call checkpoint_done."""

    index: int
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ItemComplete:
    """Receiver: all bytes of item ``index`` arrived; make durable, verify, call item_verified."""

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
    """The handoff was given up (``by_peer`` says who)."""

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
    """States of both machines (each uses a subset)."""

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


Handler = Callable[[Any, Any], None]


class _Core:
    """What both machines share: queues, ping/idle timers, errors, cancel."""

    TABLE: dict[tuple[State, str], Handler] = {}

    def __init__(self, hello: m.Hello, *, now: float) -> None:
        self.state = State.IDLE
        self.handoff_id = ""
        self.peer_hello: m.Hello | None = None
        self._hello = hello
        self._out: list[Any] = []
        self._events: list[Event] = []
        self._last_rx = now
        self._last_tx = now

    # -------------------------------------------------------- adapter API

    def outgoing(self) -> list[Any]:
        """Messages to send now, in order (drains the queue)."""
        out, self._out = self._out, []
        return out

    def events(self) -> list[Event]:
        """What happened / what the adapter must do (drains the queue)."""
        ev, self._events = self._events, []
        return ev

    @property
    def finished(self) -> bool:
        """True once the exchange reached a terminal state."""
        return self.state in TERMINAL

    def receive(self, msg: Any, now: float) -> None:
        """Feed one decoded message from the peer."""
        self._last_rx = now
        tag = codec.tag_of(msg)
        if tag == "ping":
            self._send(m.Pong(nonce=msg.nonce), now)
            return
        if tag == "pong":
            return
        if self.finished:
            return
        if tag == "error":
            self._fail(msg.code, f"peer reported: {msg.message}", Blame.PEER, notify=False)
            return
        if tag == "cancel":
            if self.state == State.DELIVERED:
                return  # too late to cancel: the receiver has it
            self._check_id(msg.handoff_id)
            self.state = State.CANCELLED
            self._events.append(Cancelled(reason=msg.reason, by_peer=True))
            return
        handler = self.TABLE.get((self.state, tag))
        if handler is None:
            self.protocol_error(
                _peer_error("unexpected-message", f"{tag} is not valid in state {self.state}")
            )
            return
        try:
            handler(self, msg)
        except ProtocolError as exc:
            self.protocol_error(exc)

    def receive_bytes(self, data: bytes, now: float) -> None:
        """Decode and feed one message; a malformed one fails the exchange."""
        try:
            msg = codec.decode(data)
        except ProtocolError as exc:
            self.protocol_error(exc)
            return
        self.receive(msg, now)

    def protocol_error(self, exc: ProtocolError) -> None:
        """Fail with ``exc`` and tell the peer why."""
        self._fail(exc.code, exc.message, exc.blame, notify=True)

    def cancel(self, reason: str, now: float) -> None:
        """Give the handoff up and tell the peer."""
        if self.finished or self.state == State.DELIVERED:
            return
        self._send(m.Cancel(handoff_id=self.handoff_id, reason=reason), now)
        self.state = State.CANCELLED
        self._events.append(Cancelled(reason=reason, by_peer=False))

    def next_timer(self) -> float | None:
        """When ``timer`` should next be called (None once finished)."""
        if self.finished:
            return None
        return min(self._last_tx + PING_INTERVAL, self._last_rx + IDLE_TIMEOUT)

    def timer(self, now: float) -> None:
        """Send keepalives; fail when the peer has been silent too long."""
        if self.finished:
            return
        if now - self._last_rx >= IDLE_TIMEOUT:
            self._fail("peer-timeout", "the peer went silent", Blame.PEER, notify=False)
            return
        if now - self._last_tx >= PING_INTERVAL:
            self._send(m.Ping(nonce=int(now * 1000)), now)

    # -------------------------------------------------------- internals

    def _send(self, msg: Any, now: float | None = None) -> None:
        self._out.append(msg)
        if now is not None:
            self._last_tx = now

    def _fail(self, code: str, message: str, blame: Blame, *, notify: bool) -> None:
        if self.finished:
            return
        if notify:
            self._send(m.Error(code=code[:64], message=message[:1024]))
        self.state = State.FAILED
        self._events.append(Failed(code=code, message=message, blame=blame))

    def _check_id(self, handoff_id: str) -> None:
        if handoff_id != self.handoff_id:
            raise _peer_error("wrong-handoff", "message is for another handoff")

    def _on_hello(self, msg: m.Hello) -> None:
        if self.peer_hello is not None:
            raise _peer_error("duplicate-hello", "hello sent twice")
        if msg.version != m.PROTOCOL_VERSION:
            raise _peer_error("version-mismatch", f"peer speaks version {msg.version}")
        self.peer_hello = msg
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
        super().__init__(hello, now=now)
        self.handoff_id = manifest.handoff_id
        self.manifest = manifest
        self._offer = offer
        self._sizes = {item.index: item.size for item in manifest.items}
        self._window = window
        self._chunk = min(chunk, m.MAX_CHUNK)
        self._order: list[int] = []
        self.acked: dict[int, int] = {}
        self._requested: dict[int, int] = {}
        self.sent_bytes = 0

    def start(self, now: float) -> None:
        """Queue hello and the signed offer."""
        if self.state != State.IDLE:
            return
        self._send(self._hello, now)
        self._send(self._offer, now)
        self.state = State.AWAIT_ANSWER

    @property
    def total(self) -> int:
        """Bytes of the accepted items."""
        return sum(self._sizes[i] for i in self._order)

    @property
    def done(self) -> int:
        """Bytes acknowledged by the receiver."""
        return sum(self.acked.values())

    def _in_flight(self) -> int:
        return sum(self._requested[i] - self.acked[i] for i in self._order)

    def _pump(self) -> None:
        room = self._window - self._in_flight()
        for index in self._order:
            size = self._sizes[index]
            while room > 0 and self._requested[index] < size:
                offset = self._requested[index]
                length = min(self._chunk, size - offset, room)
                self._events.append(NeedData(index=index, offset=offset, length=length))
                self._requested[index] = offset + length
                room -= length
            if self._requested[index] < size:
                return

    def data_ready(self, index: int, offset: int, data: bytes, now: float) -> None:
        """The bytes a NeedData asked for."""
        if self.state != State.STREAMING:
            return
        self._send(m.Data(handoff_id=self.handoff_id, index=index, offset=offset, data=data), now)
        self.sent_bytes += len(data)

    def _on_accept(self, msg: m.Accept) -> None:
        self._check_id(msg.handoff_id)
        if not msg.items:
            raise _peer_error("accept-empty", "accept names no item")
        seen: set[int] = set()
        for r in msg.items:
            if r.index not in self._sizes or r.index in seen:
                raise _peer_error("accept-bad-item", f"accept names item {r.index} wrongly")
            if not 0 <= r.offset <= self._sizes[r.index]:
                raise _peer_error("accept-bad-offset", f"resume offset {r.offset} is out of range")
            seen.add(r.index)
        self._order = sorted(seen)
        self.acked = {r.index: r.offset for r in msg.items}
        self._requested = dict(self.acked)
        self._events.append(Accepted(resume=dict(self.acked)))
        self._events.append(Progress(done=self.done, total=self.total))
        self.state = State.STREAMING
        if self.done == self.total:
            self.state = State.AWAIT_DELIVERED
            return
        self._pump()

    def _on_decline(self, msg: m.Decline) -> None:
        self._check_id(msg.handoff_id)
        self.state = State.DECLINED
        self._events.append(Declined(reason=msg.reason, message=msg.message))

    def _on_ack(self, msg: m.Ack) -> None:
        self._check_id(msg.handoff_id)
        if msg.index not in self.acked:
            raise _peer_error("ack-bad-item", f"ack for item {msg.index} not accepted")
        if msg.offset > self._requested[msg.index]:
            raise _peer_error("ack-beyond-sent", "ack for bytes never sent")
        if msg.offset <= self.acked[msg.index]:
            return  # a duplicate: acks only move forward
        self.acked[msg.index] = msg.offset
        self._events.append(Progress(done=self.done, total=self.total))
        if self.done == self.total:
            self.state = State.AWAIT_DELIVERED
            return
        self._pump()

    def _on_delivered(self, msg: m.Delivered) -> None:
        self._check_id(msg.handoff_id)
        if self.state != State.AWAIT_ANSWER and self.done != self.total:
            raise _peer_error("delivered-early", "delivered before every byte was acknowledged")
        self.state = State.DELIVERED
        self._events.append(Delivered())

    def _on_resumed(self, msg: m.Resumed) -> None:
        self._check_id(msg.handoff_id)
        self.state = State.RESUMED
        self._events.append(Resumed())

    TABLE: dict[tuple[State, str], Handler] = {
        (State.AWAIT_ANSWER, "hello"): _Core._on_hello,
        (State.AWAIT_ANSWER, "accept"): _on_accept,
        (State.AWAIT_ANSWER, "decline"): _on_decline,
        (State.AWAIT_ANSWER, "delivered"): _on_delivered,  # a duplicate handoff
        (State.STREAMING, "ack"): _on_ack,
        (State.AWAIT_DELIVERED, "ack"): _on_ack,
        (State.AWAIT_DELIVERED, "delivered"): _on_delivered,
        (State.DELIVERED, "ack"): _on_ack,
        (State.DELIVERED, "delivered"): lambda self, msg: None,
        (State.DELIVERED, "resumed"): _on_resumed,
    }


# ---------------------------------------------------------------- receiver


class ReceiverCore(_Core):
    """The receiving side of one handoff over one connection."""

    def __init__(self, hello: m.Hello, *, now: float) -> None:
        super().__init__(hello, now=now)
        self.manifest: m.Manifest | None = None
        self._sizes: dict[int, int] = {}
        self.expected: dict[int, int] = {}
        self.durable: dict[int, int] = {}
        self._complete: set[int] = set()
        self._verified: set[int] = set()
        self.received_bytes = 0

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

    def _on_offer(self, msg: m.Offer) -> None:
        try:
            manifest = codec.decode(msg.manifest)
        except ProtocolError as exc:
            raise _peer_error(
                "offer-bad-manifest", f"manifest does not decode: {exc.code}"
            ) from exc
        if not isinstance(manifest, m.Manifest):
            raise _peer_error("offer-bad-manifest", "offer carries no manifest")
        indexes = [item.index for item in manifest.items]
        if len(set(indexes)) != len(indexes) or any(i < 0 for i in indexes):
            raise _peer_error("manifest-bad-index", "manifest item indexes must be unique")
        for item in manifest.items:
            if item.size < 0 or len(item.sha256) != 32:
                raise _peer_error("manifest-bad-item", f"item {item.index} is malformed")
        self.manifest = manifest
        self.handoff_id = manifest.handoff_id
        self.state = State.DECIDING
        self._events.append(OfferReceived(offer=msg, manifest=manifest))

    def accept(self, resume: Mapping[int, int], now: float) -> None:
        """Take the items in ``resume`` (index -> bytes durably held) and ask for the rest."""
        if self.state != State.DECIDING or self.manifest is None:
            raise ProtocolError("accept outside deciding", code="misuse", blame=Blame.LOCAL)
        sizes = {item.index: item.size for item in self.manifest.items}
        if not resume or any(i not in sizes or not 0 <= o <= sizes[i] for i, o in resume.items()):
            raise ProtocolError("bad resume offsets", code="misuse", blame=Blame.LOCAL)
        self._sizes = {i: sizes[i] for i in resume}
        self.expected = dict(resume)
        self.durable = dict(resume)
        items = tuple(m.Resume(index=i, offset=o) for i, o in sorted(resume.items()))
        self._send(m.Accept(handoff_id=self.handoff_id, items=items), now)
        self.state = State.RECEIVING
        self._events.append(Progress(done=self.done, total=self.total))
        for index in sorted(resume):
            if self.expected[index] == self._sizes[index]:
                self._complete.add(index)
                self._events.append(ItemComplete(index=index))

    def decline(self, reason: str, message: str, now: float) -> None:
        """Refuse the offer with a reason code."""
        if self.state != State.DECIDING:
            raise ProtocolError("decline outside deciding", code="misuse", blame=Blame.LOCAL)
        self._send(m.Decline(handoff_id=self.handoff_id, reason=reason, message=message), now)
        self.state = State.DECLINED
        self._events.append(Declined(reason=reason, message=message))

    def already_delivered(self, now: float) -> None:
        """The offer is for a handoff already in the inbox: say delivered, store nothing."""
        if self.state != State.DECIDING:
            raise ProtocolError("not deciding", code="misuse", blame=Blame.LOCAL)
        self._send(m.Delivered(handoff_id=self.handoff_id), now)
        self.state = State.DELIVERED
        self._events.append(Delivered())

    def _on_data(self, msg: m.Data) -> None:
        self._check_id(msg.handoff_id)
        index = msg.index
        if index not in self._sizes:
            raise _peer_error("data-bad-item", f"data for item {index} not accepted")
        expected = self.expected[index]
        end = msg.offset + len(msg.data)
        if end <= expected:
            return  # already have it: duplicates are idempotent
        if msg.offset != expected:
            code = "data-gap" if msg.offset > expected else "data-overlap"
            raise _peer_error(code, f"item {index}: data at {msg.offset}, expected {expected}")
        if end > self._sizes[index]:
            raise _peer_error("data-overflow", f"item {index}: more bytes than the manifest says")
        self.expected[index] = end
        self.received_bytes += len(msg.data)
        self._events.append(WriteData(index=index, offset=msg.offset, data=msg.data))
        self._events.append(Progress(done=self.done, total=self.total))
        if end == self._sizes[index]:
            self._complete.add(index)
            self._events.append(ItemComplete(index=index))

    def checkpoint_done(self, index: int, offset: int, now: float) -> None:
        """Bytes of ``index`` up to ``offset`` are durable: acknowledge them."""
        if self.finished or index not in self._sizes:
            return
        if offset > self.expected[index]:
            raise ProtocolError("checkpoint beyond received", code="misuse", blame=Blame.LOCAL)
        if offset <= self.durable[index]:
            return
        self.durable[index] = offset
        self._send(m.Ack(handoff_id=self.handoff_id, index=index, offset=offset), now)

    def item_verified(self, index: int, ok: bool, now: float) -> None:
        """The adapter checked item ``index``'s SHA-256."""
        if self.finished:
            return
        if not ok:
            self._fail(
                "hash-mismatch", f"item {index} does not match its hash", Blame.PEER, notify=True
            )
            return
        self._verified.add(index)
        if self._verified >= set(self._sizes):
            self.state = State.COMMITTING
            self._events.append(Commit())

    def committed(self, now: float) -> None:
        """The session is in the inbox: tell the sender."""
        if self.state != State.COMMITTING:
            return
        self._send(m.Delivered(handoff_id=self.handoff_id), now)
        self.state = State.DELIVERED
        self._events.append(Delivered())

    def resumed(self, now: float) -> None:
        """The app confirmed: tell the sender."""
        if self.state != State.DELIVERED:
            return
        self._send(m.Resumed(handoff_id=self.handoff_id), now)
        self.state = State.RESUMED
        self._events.append(Resumed())

    TABLE: dict[tuple[State, str], Handler] = {
        (State.AWAIT_OFFER, "hello"): _Core._on_hello,
        (State.AWAIT_OFFER, "offer"): _on_offer,
        (State.RECEIVING, "data"): _on_data,
        (State.COMMITTING, "data"): _on_data,
        (State.DELIVERED, "data"): lambda self, msg: None,
    }
