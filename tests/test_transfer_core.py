"""The transfer state machines pushed against each other, with no sockets."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handoffd.errors import Blame, ProtocolError
from handoffd.proto import codec
from handoffd.proto import messages as m
from handoffd.proto import transfer as t
from tests.test_codec import strategy

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


def test_full_transfer_then_resumed() -> None:
    p = connect(FILES, checkpoint_every=3)
    assert p.run()
    assert p.sender.state == p.receiver.state == t.State.DELIVERED
    assert p.disk.contents(len(FILES)) == FILES
    assert p.disk.inbox
    assert all(n <= m.MAX_CHUNK for _, _, n in p.sent)
    assert sum(n for _, _, n in p.sent) == sum(map(len, FILES))  # every byte exactly once
    total = sum(map(len, FILES))
    assert [e for e in p.s_events if isinstance(e, t.Progress)][-1] == t.Progress(total, total)
    assert t.Accepted(resume=dict.fromkeys(range(len(FILES)), 0)) in p.s_events
    p.receiver.resumed(1.0)
    assert p.run()
    assert p.sender.finished
    assert str(p.sender.state) == "resumed"
    assert p.receiver.finished
    assert t.Resumed() in p.s_events


def test_a_large_offer_travels_in_parts() -> None:
    files = [bytes([i % 256]) * i for i in range(300)]
    offer = make_offer(files, context=b'{"x": "' + b"y" * 60_000 + b'"}')
    p = connect(files, offer=offer)
    parts = [msg for msg in p.sender.outgoing() if isinstance(msg, m.OfferPart)]
    assert len(parts) > 1
    assert all(len(codec.encode(part)) <= m.WIRE_MAX for part in parts)
    msgs: list[m.Message] = [hello(SENDER), *parts]
    for msg in msgs:
        p.receiver.receive(msg, 0)
    received = [e for e in p.receiver.events() if isinstance(e, t.OfferReceived)]
    assert received == [t.OfferReceived(offer=offer[0], manifest=offer[1])]


def test_selective_accept_sends_only_chosen_items() -> None:
    p = connect(FILES, accept_items={0, 2})
    assert p.run()
    assert p.sender.state == t.State.DELIVERED
    assert {i for i, _, _ in p.sent} == {0}
    assert 3 not in p.disk.data


@pytest.mark.parametrize("reason", ["handoff-disabled", "type-not-accepted", "too-large"])
def test_decline_stops_everything(reason: str) -> None:
    p = connect(FILES, decline=reason)
    assert p.run()
    assert p.sender.state == p.receiver.state == t.State.DECLINED
    assert p.sent == []
    assert t.Declined(reason=reason, message="no") in p.s_events


def test_a_duplicate_handoff_is_delivered_at_once() -> None:
    disk = Disk()
    assert connect(FILES, disk).run()
    again = connect(FILES, disk)
    assert again.run()
    assert again.sender.state == again.receiver.state == t.State.DELIVERED
    assert again.sent == []
    assert t.Delivered() in again.s_events


def test_duplicated_data_acks_and_delivered_are_harmless() -> None:
    def dup(msg: m.Message) -> bool:
        return isinstance(msg, m.Data | m.Ack | m.Delivered | m.Pong)

    p = connect(FILES, duplicate=dup, checkpoint_every=2)
    assert p.run()
    assert p.sender.state == p.receiver.state == t.State.DELIVERED
    assert p.disk.contents(len(FILES)) == FILES
    assert failed(p.s_events + p.r_events) == []


def test_acks_wait_for_durability_and_the_window_holds() -> None:
    p = connect(FILES, checkpoint_every=4, window=200_000, receiver_window=150_000)
    assert p.run()
    assert p.sender.state == t.State.DELIVERED
    assert 0 < p.max_in_flight <= 150_000  # the receiver's smaller window wins
    assert len(p.acks) < len(p.sent)  # acks follow checkpoints, not every chunk


def test_hash_mismatch_fails_and_blames_the_peer() -> None:
    p = connect([b"abc" * 100], offer=make_offer([b"abd" * 100]))
    assert p.run()
    assert p.receiver.state == p.sender.state == t.State.FAILED
    assert failed(p.r_events) == [("hash-mismatch", Blame.PEER)]
    assert failed(p.s_events) == [("hash-mismatch", Blame.PEER)]
    assert not p.disk.inbox


# ---------------------------------------------------------------- cancel


@pytest.mark.parametrize("who", ["sender", "receiver"])
def test_cancel_mid_transfer_reaches_the_other_side(who: str) -> None:
    p = connect(FILES)
    assert not p.run(budget=8)
    side, other = (p.sender, p.receiver) if who == "sender" else (p.receiver, p.sender)
    side.cancel("user", 1.0)
    sent_before = len(p.sent) + sum(isinstance(msg, m.Data) for _, msg in p.wire)
    assert p.run()
    assert side.state == other.state == t.State.CANCELLED
    assert t.Cancelled(reason="user", by_peer=False) in side.events() + p.s_events + p.r_events
    events = p.r_events if who == "sender" else p.s_events
    assert t.Cancelled(reason="user", by_peer=True) in events
    if who == "sender":
        assert len(p.sent) == sent_before  # nothing more after the cancel
    assert not p.disk.inbox


def test_cancel_before_the_offer_and_after_delivery() -> None:
    r = t.ReceiverCore(hello(RECEIVER), now=0)
    r.start(0)
    r.receive(hello(SENDER), 0)
    r.receive(m.Cancel(handoff_id="anything", reason="user"), 0)
    assert r.state == t.State.CANCELLED
    p = connect(FILES)
    assert p.run()
    p.sender.cancel("late", 1)
    p.receiver.receive(m.Cancel(handoff_id=HID, reason="late"), 1)
    assert p.sender.state == p.receiver.state == t.State.DELIVERED  # too late: it is there
    assert p.sender.outgoing() == []


def test_cancel_for_another_handoff_fails_without_raising() -> None:
    p = connect(FILES)
    assert not p.run(budget=5)
    p.receiver.receive(m.Cancel(handoff_id="other", reason="x"), 0)
    assert p.receiver.state == t.State.FAILED
    assert failed(p.receiver.events()) == [("wrong-handoff", Blame.PEER)]


# ---------------------------------------------------------------- protocol errors


def _sender_in(state: t.State) -> t.SenderCore:
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


def _receiver_in(state: t.State) -> t.ReceiverCore:
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


@pytest.mark.parametrize(
    ("make", "state", "msg"),
    [
        (_sender_in, t.State.IDLE, hello(RECEIVER)),
        (_sender_in, t.State.AWAIT_ANSWER, DATA),
        (_sender_in, t.State.AWAIT_ANSWER, PART),
        (_sender_in, t.State.AWAIT_ANSWER, m.Resumed(handoff_id=HID)),
        (_sender_in, t.State.STREAMING, ACCEPT),
        (_sender_in, t.State.STREAMING, hello(RECEIVER)),
        (_sender_in, t.State.STREAMING, m.Decline(handoff_id=HID, reason="r", message="")),
        (_receiver_in, t.State.IDLE, hello(SENDER)),
        (_receiver_in, t.State.AWAIT_OFFER, DATA),
        (_receiver_in, t.State.AWAIT_OFFER, ACK),
        (_receiver_in, t.State.AWAIT_OFFER, m.Delivered(handoff_id=HID)),
        (_receiver_in, t.State.DECIDING, DATA),
        (_receiver_in, t.State.DECIDING, PART),
        (_receiver_in, t.State.RECEIVING, PART),
        (_receiver_in, t.State.RECEIVING, ACCEPT),
        (_receiver_in, t.State.RECEIVING, m.Resumed(handoff_id=HID)),
    ],
)
def test_out_of_state_messages_are_protocol_errors(
    make: Callable[[t.State], t.SenderCore | t.ReceiverCore], state: t.State, msg: m.Message
) -> None:
    core = make(state)
    core.events()
    core.outgoing()
    core.receive(msg, 0)
    assert core.state == t.State.FAILED
    assert failed(core.events()) == [("unexpected-message", Blame.PEER)]
    (error,) = core.outgoing()
    assert isinstance(error, m.Error)
    assert error.code == "unexpected-message"
    core.receive(msg, 0)  # after failing, the rest is ignored
    assert core.outgoing() == []
    assert core.events() == []


def _code_after(core: t.SenderCore | t.ReceiverCore, *msgs: m.Message) -> str | None:
    core.events()
    for msg in msgs:
        core.receive(msg, 0)
    codes = failed(core.events())
    return codes[0][0] if codes else None


def test_hello_rules() -> None:
    r = _receiver_in(t.State.AWAIT_OFFER)
    assert _code_after(r, PART) == "hello-first"
    r = _receiver_in(t.State.AWAIT_OFFER)
    assert _code_after(r, hello(SENDER), hello(SENDER)) == "duplicate-hello"
    r = _receiver_in(t.State.AWAIT_OFFER)
    assert _code_after(r, hello(SENDER, version=2)) == "version-mismatch"
    s = _sender_in(t.State.AWAIT_ANSWER)
    assert _code_after(s, ACCEPT) == "hello-first"


def test_offer_part_rules() -> None:
    offer = codec.encode(make_offer([b"x"])[0])

    def parts(*ps: m.OfferPart) -> str | None:
        return _code_after(_receiver_in(t.State.AWAIT_OFFER), hello(SENDER), *ps)

    assert parts(m.OfferPart(handoff_id=HID, seq=1, count=2, data=offer)) == "offer-part-order"
    assert parts(m.OfferPart(handoff_id=HID, seq=0, count=2, data=offer[:5]),
                 m.OfferPart(handoff_id=HID, seq=0, count=2, data=offer[5:])) == "offer-part-order"  # fmt: skip
    assert parts(m.OfferPart(handoff_id=HID, seq=0, count=2, data=offer[:5]),
                 m.OfferPart(handoff_id="H2", seq=1, count=2, data=offer[5:])) == "offer-part-mismatch"  # fmt: skip
    assert parts(m.OfferPart(handoff_id=HID, seq=0, count=2, data=offer[:5]),
                 m.OfferPart(handoff_id=HID, seq=1, count=3, data=offer[5:])) == "offer-part-mismatch"  # fmt: skip
    assert parts(m.OfferPart(handoff_id=HID, seq=0, count=1, data=offer[:-1])) == "offer-malformed"
    assert parts(m.OfferPart(handoff_id="H2", seq=0, count=1, data=offer)) == "offer-wrong-handoff"
    assert parts(m.OfferPart(handoff_id=HID, seq=0, count=1, data=codec.encode(m.Ping(nonce=1)))) == "offer-malformed"  # fmt: skip
    dup = make_offer([b"x", b"y"])[1]
    twice = dataclasses.replace(dup, items=(dup.items[0],) * 2)
    raw = codec.encode(m.Offer(manifest=codec.encode(twice), signature=b"s" * 64, cert=b""))
    assert parts(m.OfferPart(handoff_id=HID, seq=0, count=1, data=raw)) == "manifest-bad-index"
    ok = _receiver_in(t.State.AWAIT_OFFER)
    assert (
        _code_after(ok, hello(SENDER), m.OfferPart(handoff_id=HID, seq=0, count=1, data=offer))
        is None
    )
    assert ok.state == t.State.DECIDING


@pytest.mark.parametrize(
    ("msgs", "code"),
    [
        ([m.Data(handoff_id=HID, index=0, offset=50, data=b"y")], "data-gap"),
        ([m.Data(handoff_id=HID, index=0, offset=0, data=b"y" * 1001)], "data-overflow"),
        ([m.Data(handoff_id=HID, index=1, offset=0, data=b"y")], "data-bad-item"),
        ([m.Data(handoff_id="H2", index=0, offset=0, data=b"y")], "wrong-handoff"),
        ([m.Data(handoff_id=HID, index=0, offset=0, data=b"y" * 10),
          m.Data(handoff_id=HID, index=0, offset=5, data=b"y" * 10)], "data-overlap"),
        ([m.Error(code="boom", message="x")], "boom"),
    ],
)  # fmt: skip
def test_receiver_refuses_bad_data(msgs: list[m.Message], code: str) -> None:
    assert _code_after(_receiver_in(t.State.RECEIVING), *msgs) == code


def test_receiver_enforces_its_window() -> None:
    p = connect([b"x" * 200_000], receiver_window=m.MIN_WINDOW, checkpoint_every=10**9)
    assert not p.run(budget=4)  # hello, offer, hello, accept
    p.sender._window = 10**6  # a sender that ignores the advertised window
    p.sender._pump()
    assert p.run()
    assert failed(p.r_events) == [("flow-control", Blame.PEER)]


@pytest.mark.parametrize(
    ("msgs", "code"),
    [
        ([m.Ack(handoff_id=HID, index=5, offset=1)], "ack-bad-item"),
        ([m.Ack(handoff_id=HID, index=0, offset=m.MIN_WINDOW + 1)], "ack-beyond-sent"),
        ([m.Ack(handoff_id="H2", index=0, offset=1)], "wrong-handoff"),
        ([m.Delivered(handoff_id=HID)], "delivered-early"),
    ],
)
def test_sender_refuses_bad_answers(msgs: list[m.Message], code: str) -> None:
    s = _sender_in(t.State.STREAMING)
    for ev in s.events():
        if isinstance(ev, t.NeedData):
            s.data_ready(ev.index, ev.offset, b"x" * ev.length, 0)
    assert _code_after(s, *msgs) == code


@pytest.mark.parametrize(
    ("items", "code"),
    [
        ((m.Resume(index=3, offset=0),), "accept-bad-item"),
        ((m.Resume(index=0, offset=0), m.Resume(index=0, offset=0)), "accept-bad-item"),
        ((m.Resume(index=0, offset=300_001),), "accept-bad-offset"),
    ],
)
def test_sender_refuses_bad_accepts(items: tuple[m.Resume, ...], code: str) -> None:
    s = _sender_in(t.State.AWAIT_ANSWER)
    accept = m.Accept(handoff_id=HID, items=items, window=m.MIN_WINDOW)
    assert _code_after(s, hello(RECEIVER), accept) == code


def test_garbage_bytes_fail_cleanly() -> None:
    r = _receiver_in(t.State.AWAIT_OFFER)
    r.receive_bytes(b"\xc1\xc1", 0)
    assert r.state == t.State.FAILED
    assert failed(r.events()) == [("decode-malformed", Blame.PEER)]
    big = _receiver_in(t.State.AWAIT_OFFER)
    big.receive_bytes(codec.encode(m.Error(code="x", message="y")) + b"\0" * m.WIRE_MAX, 0)
    assert failed(big.events()) == [("decode-oversize", Blame.PEER)]


def test_adapter_misuse_raises_locally() -> None:
    s = _sender_in(t.State.STREAMING)
    need = next(e for e in s.events() if isinstance(e, t.NeedData))
    for args in [(need.index, need.offset + 1, b"x" * need.length),
                 (need.index, need.offset, b"x" * (need.length - 1))]:  # fmt: skip
        with pytest.raises(ProtocolError) as e:
            s.data_ready(*args, 0)
        assert (e.value.code, e.value.blame) == ("misuse", Blame.LOCAL)
    r = _receiver_in(t.State.RECEIVING)
    calls: list[Callable[[], None]] = [
        lambda: r.checkpoint_done(0, 1, 0),  # nothing received yet
        lambda: r.checkpoint_done(9, 0, 0),
        lambda: r.item_verified(0, ok=True, now=0),  # not complete
        lambda: r.accept({0: 0}, 0),
        lambda: r.decline("x", "y", 0),
        lambda: r.already_delivered(0),
    ]
    for call in calls:
        with pytest.raises(ProtocolError) as e:
            call()
        assert (e.value.code, e.value.blame) == ("misuse", Blame.LOCAL)
    d = _receiver_in(t.State.DECIDING)
    for bad in [{}, {0: 1001}, {0: -1}, {7: 0}]:
        with pytest.raises(ProtocolError):
            d.accept(bad, 0)
    offer, manifest = make_offer([b"x"])
    with pytest.raises(ProtocolError):
        t.SenderCore(hello(SENDER), offer, make_offer([b"y"])[1], now=0)
    with pytest.raises(ValueError, match="window"):
        t.SenderCore(hello(SENDER), offer, manifest, now=0, window=1)


def test_pings_pongs_and_idle_timeout() -> None:
    s = _sender_in(t.State.AWAIT_ANSWER)
    assert s.next_timer() == t.PING_INTERVAL
    s.timer(t.PING_INTERVAL)
    (ping,) = s.outgoing()
    assert isinstance(ping, m.Ping)
    r = _receiver_in(t.State.AWAIT_OFFER)
    r.outgoing()
    r.receive(ping, 6.0)
    assert r.outgoing() == [m.Pong(nonce=ping.nonce)]
    s.receive(m.Pong(nonce=ping.nonce), 6.0)
    assert s.next_timer() == pytest.approx(min(5.0 + t.PING_INTERVAL, 6.0 + t.IDLE_TIMEOUT))
    s.timer(6.0 + t.IDLE_TIMEOUT)
    assert s.state == t.State.FAILED
    assert failed(s.events()) == [("peer-timeout", Blame.PEER)]
    assert s.next_timer() is None


# ---------------------------------------------------------------- properties


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.integers(1, 40), min_size=1, max_size=6),
    st.integers(1, 5),
    st.data(),
)
def test_drop_and_reconnect_never_resends_acknowledged_bytes(
    cuts: list[int], checkpoint_every: int, data: st.DataObject
) -> None:
    files = [
        data.draw(st.binary(max_size=150_000)),
        b"q" * data.draw(st.integers(0, 300_000)),
        data.draw(st.binary(max_size=100)),
    ]
    disk = Disk()
    acked: dict[int, int] = {}
    p = None
    for cut in [*cuts, None]:
        p = connect(files, disk, checkpoint_every=checkpoint_every, window=128 * 1024)
        p.run(budget=cut)
        for index, offset, _ in p.sent:
            assert offset >= acked.get(index, 0), "acknowledged bytes were sent again"
        acked = {i: max(acked.get(i, 0), o) for i, o in p.sender.acked.items()}
        disk.crash()  # the connection dropped; unsynced writes may be gone
        if p.sender.state == t.State.DELIVERED:
            break
    assert p is not None
    assert p.sender.state == t.State.DELIVERED
    assert disk.inbox
    assert disk.contents(len(files)) == files


ANY_MESSAGE = st.one_of(
    [strategy(cls) for tag, cls in sorted(codec.MESSAGES.items()) if cls not in m.ENCLOSED]
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["sender", "receiver"]), st.integers(0, 12), st.lists(ANY_MESSAGE, max_size=6)
)
def test_any_peer_message_in_any_state_never_raises(
    side: str, steps: int, msgs: list[m.Message]
) -> None:
    p = connect(FILES)
    p.run(budget=steps)
    core = p.sender if side == "sender" else p.receiver
    for msg in msgs:
        core.receive(msg, 1.0)
        for out in core.outgoing():
            codec.encode(out)  # whatever it answers is valid
    assert all(isinstance(e, t.Event) for e in core.events())


def test_resume_continues_from_the_checkpoints() -> None:
    files = [b"a" * 500_000]
    disk = Disk()
    first = connect(files, disk, checkpoint_every=2)
    first.run(budget=12)
    disk.crash()
    held = disk.checkpoint[0]
    assert 0 < held < len(files[0])
    assert max(o for _, o in first.acks) <= held
    again = connect(files, disk, checkpoint_every=2)
    assert again.run()
    assert t.Accepted(resume={0: held}) in again.s_events
    assert min(o for _, o, _ in again.sent) == held
    assert sum(n for _, _, n in again.sent) == len(files[0]) - held
    assert disk.contents(1) == files


def test_a_cancel_while_deciding_makes_the_decision_a_no_op() -> None:
    r = _receiver_in(t.State.DECIDING)
    r.receive(m.Cancel(handoff_id=HID, reason="user"), 0)
    r.outgoing()
    r.accept({0: 0}, 0)
    r.decline("x", "y", 0)
    r.already_delivered(0)
    assert r.state == t.State.CANCELLED
    assert r.outgoing() == []
