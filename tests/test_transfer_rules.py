"""The transfer state machines' rules: every message out of state or out of bounds fails cleanly."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from handoffd.errors import Blame, ProtocolError
from handoffd.proto import codec
from handoffd.proto import messages as m
from handoffd.proto import transfer as t
from tests.transferkit import (
    ACCEPT,
    ACK,
    DATA,
    HID,
    PART,
    RECEIVER,
    SENDER,
    connect,
    failed,
    hello,
    make_offer,
    receiver_in,
    sender_in,
)


@pytest.mark.parametrize(
    ("make", "state", "msg"),
    [
        (sender_in, t.State.IDLE, hello(RECEIVER)),
        (sender_in, t.State.AWAIT_ANSWER, DATA),
        (sender_in, t.State.AWAIT_ANSWER, PART),
        (sender_in, t.State.AWAIT_ANSWER, m.Resumed(handoff_id=HID)),
        (sender_in, t.State.STREAMING, ACCEPT),
        (sender_in, t.State.STREAMING, hello(RECEIVER)),
        (sender_in, t.State.STREAMING, m.Decline(handoff_id=HID, reason="r", message="")),
        (receiver_in, t.State.IDLE, hello(SENDER)),
        (receiver_in, t.State.AWAIT_OFFER, DATA),
        (receiver_in, t.State.AWAIT_OFFER, ACK),
        (receiver_in, t.State.AWAIT_OFFER, m.Delivered(handoff_id=HID)),
        (receiver_in, t.State.DECIDING, DATA),
        (receiver_in, t.State.DECIDING, PART),
        (receiver_in, t.State.RECEIVING, PART),
        (receiver_in, t.State.RECEIVING, ACCEPT),
        (receiver_in, t.State.RECEIVING, m.Resumed(handoff_id=HID)),
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
    r = receiver_in(t.State.AWAIT_OFFER)
    assert _code_after(r, PART) == "hello-first"
    r = receiver_in(t.State.AWAIT_OFFER)
    assert _code_after(r, hello(SENDER), hello(SENDER)) == "duplicate-hello"
    r = receiver_in(t.State.AWAIT_OFFER)
    assert _code_after(r, hello(SENDER, version=2)) == "version-mismatch"
    s = sender_in(t.State.AWAIT_ANSWER)
    assert _code_after(s, ACCEPT) == "hello-first"


def test_offer_part_rules() -> None:
    offer = codec.encode(make_offer([b"x"])[0])

    def parts(*ps: m.OfferPart) -> str | None:
        return _code_after(receiver_in(t.State.AWAIT_OFFER), hello(SENDER), *ps)

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
    ok = receiver_in(t.State.AWAIT_OFFER)
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
    assert _code_after(receiver_in(t.State.RECEIVING), *msgs) == code


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
    s = sender_in(t.State.STREAMING)
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
    s = sender_in(t.State.AWAIT_ANSWER)
    accept = m.Accept(handoff_id=HID, items=items, window=m.MIN_WINDOW)
    assert _code_after(s, hello(RECEIVER), accept) == code


def test_garbage_bytes_fail_cleanly() -> None:
    r = receiver_in(t.State.AWAIT_OFFER)
    r.receive_bytes(b"\xc1\xc1", 0)
    assert r.state == t.State.FAILED
    assert failed(r.events()) == [("decode-malformed", Blame.PEER)]
    big = receiver_in(t.State.AWAIT_OFFER)
    big.receive_bytes(codec.encode(m.Error(code="x", message="y")) + b"\0" * m.WIRE_MAX, 0)
    assert failed(big.events()) == [("decode-oversize", Blame.PEER)]


def test_adapter_misuse_raises_locally() -> None:
    s = sender_in(t.State.STREAMING)
    need = next(e for e in s.events() if isinstance(e, t.NeedData))
    for args in [(need.index, need.offset + 1, b"x" * need.length),
                 (need.index, need.offset, b"x" * (need.length - 1))]:  # fmt: skip
        with pytest.raises(ProtocolError) as e:
            s.data_ready(*args, 0)
        assert (e.value.code, e.value.blame) == ("misuse", Blame.LOCAL)
    r = receiver_in(t.State.RECEIVING)
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
    d = receiver_in(t.State.DECIDING)
    for bad in [{}, {0: 1001}, {0: -1}, {7: 0}]:
        with pytest.raises(ProtocolError):
            d.accept(bad, 0)
    offer, manifest = make_offer([b"x"])
    with pytest.raises(ProtocolError):
        t.SenderCore(hello(SENDER), offer, make_offer([b"y"])[1], now=0)
    with pytest.raises(ValueError, match="window"):
        t.SenderCore(hello(SENDER), offer, manifest, now=0, window=1)
