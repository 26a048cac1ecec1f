"""The lane's pure parts: tokens, the first frame, the ``lane`` message in the sender core."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from handoffd import identity
from handoffd.errors import Blame, ProtocolError
from handoffd.proto import messages as m
from handoffd.proto import transfer as t
from handoffd.transport.base import PeerAuthError
from handoffd.transport.lanetoken import LaneTicket, LaneTokens, encode_first, parse_first
from tests.transferkit import (
    HID,
    RECEIVER,
    SENDER,
    failed,
    hello,
    make_offer,
    receiver_in,
    sender_in,
)
from tests.transport.helpers import Account, Device, utcnow


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def account() -> Account:
    return Account()


def test_first_frame_round_trip_and_strictness() -> None:
    ticket = LaneTicket("abc123", "A" * 32, b"\x01" * 16)
    assert parse_first(encode_first(ticket)) == ticket
    bad = [
        b"",
        b"[]",
        b'{"lane":1}',
        b'{"handoff":"abc","lane":2,"to":"' + b"A" * 32 + b'","token":"' + b"0" * 32 + b'"}',
        b'{"handoff":"abc","lane":true,"to":"' + b"A" * 32 + b'","token":"' + b"0" * 32 + b'"}',
        b'{"handoff":"a/b","lane":1,"to":"' + b"A" * 32 + b'","token":"' + b"0" * 32 + b'"}',
        b'{"handoff":"abc","lane":1,"to":"nope","token":"' + b"0" * 32 + b'"}',
        b'{"handoff":"abc","lane":1,"to":"' + b"A" * 32 + b'","token":"00"}',
        b'{"extra":1,"handoff":"abc","lane":1,"to":"'
        + b"A" * 32
        + b'","token":"'
        + b"0" * 32
        + b'"}',
        b"\xff" * 10,
        b"x" * 600,
    ]
    for data in bad:
        with pytest.raises(PeerAuthError) as info:
            parse_first(data)
        assert info.value.code == "lane-ticket-malformed", data


def test_tokens_single_use_bound_and_expiring(account: Account) -> None:
    target, sender, other = account.device(), account.device(), account.device()
    clock = Clock()
    tokens = LaneTokens(target.id, ttl=60.0, clock=clock)
    me = identity_of(sender)

    def first(hid: str, token: bytes, to: str = target.id) -> bytes:
        return encode_first(LaneTicket(hid, to, token))

    t1 = tokens.issue("h1", sender.id)
    assert tokens.redeem(me, first("h1", t1)) == "h1"
    for attempt in range(2):  # a spent token stays spent
        with pytest.raises(PeerAuthError) as info:
            tokens.redeem(me, first("h1", t1))
        assert info.value.code == "lane-token-reused", attempt
    t2 = tokens.issue("h2", sender.id)
    with pytest.raises(PeerAuthError) as info:
        tokens.redeem(identity_of(other), first("h2", t2))
    assert info.value.code == "lane-token-mismatch"
    with pytest.raises(PeerAuthError) as info:  # a failed redemption spends it too
        tokens.redeem(me, first("h2", t2))
    assert info.value.code == "lane-token-reused"
    t3 = tokens.issue("h3", sender.id)
    with pytest.raises(PeerAuthError) as info:
        tokens.redeem(me, first("h4", t3))
    assert info.value.code == "lane-token-mismatch"
    t5 = tokens.issue("h5", sender.id)
    with pytest.raises(PeerAuthError) as info:
        tokens.redeem(me, first("h5", t5, to=other.id))
    assert info.value.code == "lane-wrong-target"
    t6 = tokens.issue("h6", sender.id)
    clock.now += 61
    with pytest.raises(PeerAuthError) as info:
        tokens.redeem(me, first("h6", t6))
    assert info.value.code in ("lane-token-expired", "lane-token-unknown")
    with pytest.raises(PeerAuthError) as info:
        tokens.redeem(me, first("h7", b"\x07" * 16))
    assert info.value.code == "lane-token-unknown"


def identity_of(device: Device) -> identity.PeerIdentity:
    return identity.verify_device_cert(device.cert, device.local.current_trust(), now=utcnow())


LANE = m.Lane(handoff_id=HID, hosts=("198.18.0.3",), port=7722, token=b"\x05" * 16)


def test_sender_core_reports_a_lane_offer_only_while_streaming() -> None:
    sender = sender_in(t.State.STREAMING)
    sender.events()
    sender.receive(LANE, 0)
    assert sender.state == t.State.STREAMING
    assert [e for e in sender.events() if isinstance(e, t.LaneOffered)] == [t.LaneOffered(LANE)]
    other = m.Lane(handoff_id="another", hosts=LANE.hosts, port=1, token=LANE.token)
    sender.receive(other, 0)  # a lane for another handoff breaks the rules
    assert failed(sender.events()) == [("wrong-handoff", Blame.PEER)]


def test_a_lane_just_before_the_accept_is_taken_by_a_sender_that_says_lane_early() -> None:
    early = dataclasses.replace(hello(SENDER), features=(m.FEATURE_LANE, m.FEATURE_LANE_EARLY))
    sender = t.SenderCore(early, *make_offer([b"x" * 1000]), now=0)
    sender.start(0)
    sender.receive(hello(RECEIVER), 0)
    sender.events()
    sender.receive(LANE, 0)
    assert sender.state == t.State.AWAIT_ANSWER
    assert [e for e in sender.events() if isinstance(e, t.LaneOffered)] == [t.LaneOffered(LANE)]
    accept = m.Accept(handoff_id=HID, items=(m.Resume(index=0, offset=0),), window=m.MIN_WINDOW)
    sender.receive(accept, 0)
    assert _state(sender) == t.State.STREAMING
    assert not failed(sender.events())


def _state(core: t.SenderCore) -> t.State:
    return core.state


def test_a_lane_before_the_accept_or_to_a_receiver_is_a_protocol_error() -> None:
    sender = sender_in(t.State.AWAIT_ANSWER)  # its hello does not say lane-early
    sender.receive(hello(RECEIVER), 0)
    sender.events()
    sender.receive(LANE, 0)
    assert failed(sender.events()) == [("unexpected-message", Blame.PEER)]
    receiver = receiver_in(t.State.RECEIVING)
    receiver.events()
    receiver.receive(LANE, 0)
    assert failed(receiver.events()) == [("unexpected-message", Blame.PEER)]


def test_lane_message_is_strict() -> None:
    assert m.decode(m.encode(LANE)) == LANE
    for bad in (
        {"hosts": ()},
        {"hosts": ("1.2.3.4",) * 9},
        {"port": 0},
        {"port": 65536},
        {"token": b"x" * 15},
        {"token": b"x" * 33},
    ):
        fields = {"handoff_id": HID, "hosts": LANE.hosts, "port": 1, "token": LANE.token, **bad}
        data = msgpack.packb(dict(sorted({"t": "lane", **fields}.items())), use_bin_type=True)
        with pytest.raises(ProtocolError) as info:
            m.decode(data)
        assert info.value.code in ("decode-too-short", "decode-too-long", "decode-out-of-range")
