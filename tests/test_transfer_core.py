"""The transfer state machines pushed against each other, with no sockets: whole exchanges."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handoffd.errors import Blame
from handoffd.proto import codec
from handoffd.proto import messages as m
from handoffd.proto import transfer as t
from tests.test_codec import strategy
from tests.transferkit import (
    FILES,
    HID,
    RECEIVER,
    SENDER,
    Disk,
    connect,
    failed,
    hello,
    make_offer,
    receiver_in,
    sender_in,
)


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


def test_pings_pongs_and_idle_timeout() -> None:
    s = sender_in(t.State.AWAIT_ANSWER)
    assert s.next_timer() == t.PING_INTERVAL
    s.timer(t.PING_INTERVAL)
    (ping,) = s.outgoing()
    assert isinstance(ping, m.Ping)
    r = receiver_in(t.State.AWAIT_OFFER)
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
    r = receiver_in(t.State.DECIDING)
    r.receive(m.Cancel(handoff_id=HID, reason="user"), 0)
    r.outgoing()
    r.accept({0: 0}, 0)
    r.decline("x", "y", 0)
    r.already_delivered(0)
    assert r.state == t.State.CANCELLED
    assert r.outgoing() == []
