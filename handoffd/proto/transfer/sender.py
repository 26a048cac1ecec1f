"""The sending machine of one handoff over one connection, with its transition table."""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import ClassVar

from handoffd.proto import codec
from handoffd.proto import messages as m
from handoffd.proto.transfer.core import DEFAULT_WINDOW, Core, Handler, misuse, peer_error
from handoffd.proto.transfer.events import (
    Accepted,
    Declined,
    Delivered,
    LaneOffered,
    NeedData,
    Progress,
    Resumed,
    State,
)


class SenderCore(Core):
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
            raise misuse("the offer does not carry this manifest")
        self.handoff_id = manifest.handoff_id
        self.manifest = manifest
        self._offer = codec.encode(offer)
        if len(self._offer) > m.MAX_OFFER:
            raise misuse(f"offer of {len(self._offer)} bytes exceeds {m.MAX_OFFER}")
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
            raise misuse(f"data_ready({index}, {offset}, {len(data)} bytes) but asked {want}")
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
                raise peer_error("accept-bad-item", f"accept names item {r.index} wrongly")
            if r.offset > self._sizes[r.index]:
                raise peer_error("accept-bad-offset", f"resume offset {r.offset} is out of range")
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
            raise peer_error("ack-bad-item", f"ack for item {msg.index}, not accepted")
        if msg.offset > self._sent[msg.index]:
            raise peer_error("ack-beyond-sent", f"ack for item {msg.index} beyond what was sent")
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
            raise peer_error("delivered-early", "delivered before every byte was acknowledged")
        # From await-answer: the receiver already had this handoff (a duplicate).
        self.state = State.DELIVERED
        self._events.append(Delivered())

    def _on_resumed(self, msg: m.Resumed) -> None:
        self._check_id(msg.handoff_id)
        self.state = State.RESUMED
        self._events.append(Resumed())

    def _on_lane(self, msg: m.Lane) -> None:
        if self.state == State.AWAIT_ANSWER and m.FEATURE_LANE_EARLY not in self._hello.features:
            raise peer_error("unexpected-message", f"lane is not valid in state {self.state}")
        self._check_id(msg.handoff_id)
        if self.state in (State.AWAIT_ANSWER, State.STREAMING):  # later, nothing is left to move
            self._events.append(LaneOffered(lane=msg))

    TABLE: ClassVar[Mapping[tuple[State, str], Handler]] = {
        (State.AWAIT_ANSWER, "hello"): Core._on_hello,
        (State.AWAIT_ANSWER, "accept"): _on_accept,
        (State.AWAIT_ANSWER, "decline"): _on_decline,
        (State.AWAIT_ANSWER, "delivered"): _on_delivered,
        (State.AWAIT_ANSWER, "lane"): _on_lane,
        (State.STREAMING, "ack"): _on_ack,
        (State.STREAMING, "delivered"): _on_delivered,
        (State.STREAMING, "lane"): _on_lane,
        (State.AWAIT_DELIVERED, "lane"): _on_lane,
        (State.DELIVERED, "lane"): _on_lane,
        (State.AWAIT_DELIVERED, "ack"): _on_ack,
        (State.AWAIT_DELIVERED, "delivered"): _on_delivered,
        (State.DELIVERED, "ack"): _on_ack,
        (State.DELIVERED, "delivered"): _on_delivered,
        (State.DELIVERED, "resumed"): _on_resumed,
    }
