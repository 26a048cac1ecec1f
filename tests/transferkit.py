"""Helpers for the transfer cores' tests: two cores over an in-memory disk, no sockets."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from handoffd.errors import Blame
from handoffd.proto import codec
from handoffd.proto import messages as m
from handoffd.proto import transfer as t

SENDER, RECEIVER = "S" * 32, "R" * 32
HID = "H1"


def hello(device: str, version: int = m.PROTOCOL_VERSION) -> m.Hello:
    return m.Hello(version=version, device_id=device, crl_number=0, crl=None, features=())


def make_offer(
    files: list[bytes], handoff_id: str = HID, context: bytes = b"{}"
) -> tuple[m.Offer, m.Manifest]:
    items = tuple(
        m.ItemEntry(
            index=i, type="document", name=f"f{i}", mime="application/octet-stream",
            size=len(data), sha256=hashlib.sha256(data).digest(),
        )
        for i, data in enumerate(files)
    )  # fmt: skip
    manifest = m.Manifest(
        handoff_id=handoff_id, session_id="s", app_id="a", title="t", context=context,
        items=items, sender=SENDER, recipient=RECEIVER, created_ms=0,
    )  # fmt: skip
    return m.Offer(manifest=codec.encode(manifest), signature=b"s" * 64, cert=b"c"), manifest


@dataclass
class Disk:
    """The receiver's storage: written bytes may be lost on a crash, checkpointed ones survive."""

    data: dict[int, bytearray] = field(default_factory=dict)
    checkpoint: dict[int, int] = field(default_factory=dict)
    inbox: bool = False

    def crash(self) -> None:
        for index, buf in self.data.items():
            del buf[self.checkpoint.get(index, 0) :]

    def contents(self, n: int) -> list[bytes]:
        return [bytes(self.data.get(i, b"")) for i in range(n)]


@dataclass
class Pair:
    """A sender and a receiver core joined by an in-memory channel, with simple adapters."""

    sender: t.SenderCore
    receiver: t.ReceiverCore
    files: list[bytes]
    disk: Disk
    checkpoint_every: int = 1
    accept_items: set[int] | None = None
    decline: str | None = None
    duplicate: Callable[[m.Message], bool] = lambda msg: False
    sent: list[tuple[int, int, int]] = field(default_factory=list)
    acks: list[tuple[int, int]] = field(default_factory=list)
    s_events: list[t.Event] = field(default_factory=list)
    r_events: list[t.Event] = field(default_factory=list)
    unsynced: dict[int, int] = field(default_factory=dict)
    max_in_flight: int = 0
    now: float = 0.0
    wire: list[tuple[t.SenderCore | t.ReceiverCore, m.Message]] = field(default_factory=list)

    def run(self, budget: int | None = None) -> bool:
        """Move messages and events until quiet (True) or ``budget`` messages moved (False)."""
        moved = 0
        while True:
            busy = False
            for ev in self.sender.events():
                self.s_events.append(ev)
                if isinstance(ev, t.NeedData):
                    chunk = self.files[ev.index][ev.offset : ev.offset + ev.length]
                    self.sender.data_ready(ev.index, ev.offset, chunk, self.now)
                busy = True
            for ev in self.receiver.events():
                self.r_events.append(ev)
                self._receiver_does(ev)
                busy = True
            for src, dst in ((self.sender, self.receiver), (self.receiver, self.sender)):
                self.wire += [(dst, msg) for msg in src.outgoing()]
            while self.wire:
                if budget is not None and moved >= budget:
                    return False  # in flight: lost if the connection drops here
                dst, msg = self.wire.pop(0)
                self._observe(msg)
                data = codec.encode(msg)
                assert len(data) <= m.WIRE_MAX
                for _ in range(2 if self.duplicate(msg) else 1):
                    dst.receive_bytes(data, self.now)
                moved += 1
                busy = True
            if not busy:
                return True

    def _observe(self, msg: m.Message) -> None:
        if isinstance(msg, m.Data):
            self.sent.append((msg.index, msg.offset, len(msg.data)))
        elif isinstance(msg, m.Ack):
            self.acks.append((msg.index, msg.offset))
            # Durable before acknowledged: never ack what the disk could lose.
            assert msg.offset <= self.disk.checkpoint.get(msg.index, 0)
        s = self.sender
        in_flight = sum(s._requested[i] - s.acked[i] for i in s.acked)
        self.max_in_flight = max(self.max_in_flight, in_flight)

    def _checkpoint(self, index: int) -> None:
        self.disk.checkpoint[index] = len(self.disk.data[index])
        self.unsynced[index] = 0
        self.receiver.checkpoint_done(index, self.disk.checkpoint[index], self.now)

    def _receiver_does(self, ev: t.Event) -> None:
        r, disk = self.receiver, self.disk
        if isinstance(ev, t.OfferReceived):
            if self.decline:
                r.decline(self.decline, "no", self.now)
            elif disk.inbox:
                r.already_delivered(self.now)
            else:
                wanted = self.accept_items or {i.index for i in ev.manifest.items}
                for i in wanted:
                    disk.data.setdefault(i, bytearray())
                r.accept({i: disk.checkpoint.get(i, 0) for i in wanted}, self.now)
        elif isinstance(ev, t.WriteData):
            buf = disk.data[ev.index]
            assert len(buf) == ev.offset  # the core asks for contiguous writes only
            buf += ev.data
            self.unsynced[ev.index] = self.unsynced.get(ev.index, 0) + 1
            if self.unsynced[ev.index] >= self.checkpoint_every:
                self._checkpoint(ev.index)
        elif isinstance(ev, t.CheckpointNeeded):
            self._checkpoint(ev.index)
        elif isinstance(ev, t.ItemComplete):
            self._checkpoint(ev.index)
            assert r.manifest is not None
            want = r.manifest.items[ev.index].sha256
            r.item_verified(
                ev.index, hashlib.sha256(disk.data[ev.index]).digest() == want, self.now
            )
        elif isinstance(ev, t.Commit):
            disk.inbox = True
            r.committed(self.now)


def connect(
    files: list[bytes],
    disk: Disk | None = None,
    *,
    window: int = 256 * 1024,
    receiver_window: int = t.DEFAULT_WINDOW,
    offer: tuple[m.Offer, m.Manifest] | None = None,
    **kw: Any,
) -> Pair:
    s = t.SenderCore(hello(SENDER), *(offer or make_offer(files)), now=0, window=window)
    r = t.ReceiverCore(hello(RECEIVER), now=0, window=receiver_window)
    r.start(0)
    s.start(0)
    return Pair(s, r, files, disk or Disk(), **kw)


FILES = [b"a" * 1000, bytes(range(256)) * 1000, b"", b"z" * 200_000]


def failed(events: list[t.Event]) -> list[tuple[str, Blame]]:
    return [(e.code, e.blame) for e in events if isinstance(e, t.Failed)]


# ---------------------------------------------------------------- whole exchanges


def sender_in(state: t.State) -> t.SenderCore:
    p = connect([b"x" * 300_000], window=m.MIN_WINDOW)
    if state == t.State.IDLE:
        return t.SenderCore(hello(SENDER), *make_offer([b"x"]), now=0)
    p.sender.outgoing()
    if state != t.State.AWAIT_ANSWER:
        p.sender.receive(hello(RECEIVER), 0)
        p.sender.receive(
            m.Accept(handoff_id=HID, items=(m.Resume(index=0, offset=0),), window=m.MIN_WINDOW), 0
        )
    assert p.sender.state == state
    return p.sender


def receiver_in(state: t.State) -> t.ReceiverCore:
    r = t.ReceiverCore(hello(RECEIVER), now=0)
    if state == t.State.IDLE:
        return r
    r.start(0)
    if state != t.State.AWAIT_OFFER:
        offer, _ = make_offer([b"x" * 1000])
        r.receive(hello(SENDER), 0)
        r.receive(m.OfferPart(handoff_id=HID, seq=0, count=1, data=codec.encode(offer)), 0)
    if state == t.State.RECEIVING:
        r.accept({0: 0}, 0)
    assert r.state == state
    return r


DATA = m.Data(handoff_id=HID, index=0, offset=0, data=b"x")
ACK = m.Ack(handoff_id=HID, index=0, offset=1)
PART = m.OfferPart(handoff_id=HID, seq=0, count=1, data=b"x")
ACCEPT = m.Accept(handoff_id=HID, items=(m.Resume(index=0, offset=0),), window=m.MIN_WINDOW)
