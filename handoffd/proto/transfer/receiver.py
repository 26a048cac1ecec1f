"""The receiving machine of one handoff over one connection, with its transition table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from handoffd.errors import Blame, ProtocolError
from handoffd.proto import codec
from handoffd.proto import messages as m
from handoffd.proto.transfer.core import DEFAULT_WINDOW, Core, Handler, misuse, peer_error
from handoffd.proto.transfer.events import (
    CheckpointNeeded,
    Commit,
    Declined,
    Delivered,
    ItemComplete,
    OfferReceived,
    Progress,
    Resumed,
    State,
    WriteData,
)


class ReceiverCore(Core):
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
            raise peer_error("offer-part-mismatch", "offer parts disagree")
        if msg.seq != len(self._parts) or msg.seq >= msg.count:
            raise peer_error(
                "offer-part-order", f"offer part {msg.seq} of {msg.count} out of order"
            )
        self._parts_count = msg.count
        self._parts.append(msg.data)
        if sum(map(len, self._parts)) > m.MAX_OFFER:
            raise peer_error("offer-too-large", "offer exceeds its bound")
        if len(self._parts) == msg.count:
            raw, self._parts = b"".join(self._parts), []
            self._on_offer(raw)

    def _on_offer(self, raw: bytes) -> None:
        try:
            offer = codec.decode_as(raw, m.Offer, max_size=m.MAX_OFFER)
            manifest = codec.decode_as(offer.manifest, m.Manifest, max_size=m.MAX_OFFER)
        except ProtocolError as exc:
            raise peer_error("offer-malformed", f"offer does not decode: {exc.code}") from exc
        if manifest.handoff_id != self.handoff_id:
            raise peer_error("offer-wrong-handoff", "offer parts name another handoff")
        indexes = {item.index for item in manifest.items}
        if len(indexes) != len(manifest.items):
            raise peer_error("manifest-bad-index", "manifest item indexes must be unique")
        self.manifest = manifest
        self.state = State.DECIDING
        self._events.append(OfferReceived(offer=offer, manifest=manifest))

    def accept(self, resume: Mapping[int, int], now: float) -> None:
        """Take the items in ``resume`` (index -> bytes durably held) and ask for the rest."""
        if self.finished:
            return  # cancelled (or failed) while the adapter was deciding
        if self.state != State.DECIDING or self.manifest is None:
            raise misuse(f"accept in state {self.state}")
        sizes = {item.index: item.size for item in self.manifest.items}
        if not resume or any(i not in sizes or not 0 <= o <= sizes[i] for i, o in resume.items()):
            raise misuse(f"bad resume offsets {dict(resume)}")
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
            raise misuse(f"decline in state {self.state}")
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
            raise misuse(f"already_delivered in state {self.state}")
        self._send(m.Delivered(handoff_id=self.handoff_id), now)
        self.state = State.DELIVERED
        self._events.append(Delivered())

    def _on_data(self, msg: m.Data) -> None:
        self._check_id(msg.handoff_id)
        index = msg.index
        if index not in self._sizes:
            raise peer_error("data-bad-item", f"data for item {index}, not accepted")
        expected = self.expected[index]
        end = msg.offset + len(msg.data)
        if end <= expected:
            return  # bytes we already have: a duplicate is harmless
        if msg.offset != expected:
            code = "data-gap" if msg.offset > expected else "data-overlap"
            raise peer_error(code, f"item {index}: data at {msg.offset}, expected {expected}")
        if end > self._sizes[index]:
            raise peer_error("data-overflow", f"item {index}: more bytes than the manifest says")
        self._unacked += len(msg.data)
        if self._unacked > self._window:
            raise peer_error("flow-control", "more unacknowledged bytes than the window")
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
            raise misuse(f"checkpoint of item {index} at {offset} beyond what was received")
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
            raise misuse(f"item {index} verified before it was complete")
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
        (State.AWAIT_OFFER, "hello"): Core._on_hello,
        (State.AWAIT_OFFER, "offer-part"): _on_offer_part,
        (State.RECEIVING, "data"): _on_data,
        (State.COMMITTING, "data"): _on_data,
        (State.DELIVERED, "data"): _on_data,
    }
