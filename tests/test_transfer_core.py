"""The transfer state machines pushed against each other, with no sockets."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handoffd.errors import Blame
from handoffd.proto import codec
from handoffd.proto import messages as m
from handoffd.proto import transfer as t

SENDER, RECEIVER = "S" * 32, "R" * 32


def hello(device: str) -> m.Hello:
    return m.Hello(
        version=m.PROTOCOL_VERSION, device_id=device, crl_number=0, crl=None, features=()
    )


def make_offer(files: list[bytes], handoff_id: str = "H1") -> tuple[m.Offer, m.Manifest]:
    items = tuple(
        m.ItemEntry(
            index=i, type="document", name=f"f{i}", mime="application/octet-stream",
            size=len(data), sha256=hashlib.sha256(data).digest(),
        )
        for i, data in enumerate(files)
    )  # fmt: skip
    manifest = m.Manifest(
        handoff_id=handoff_id, session_id="s", app_id="a", title="t", context=b"{}",
        items=items, sender=SENDER, recipient=RECEIVER, created_ms=0,
    )  # fmt: skip
    return m.Offer(manifest=codec.encode(manifest), signature=b"s" * 64, cert=b"c"), manifest


@dataclass
class Disk:
    """The receiver's durable state: bytes and checkpoints survive a reconnect."""

    data: dict[int, bytearray] = field(default_factory=dict)
    checkpoint: dict[int, int] = field(default_factory=dict)
    inbox: bool = False


@dataclass
class Run:
    sender: t.SenderCore
    receiver: t.ReceiverCore
    files: list[bytes]
    disk: Disk
    sent: list[tuple[int, int, int]] = field(default_factory=list)
    acked_before: dict[int, int] = field(default_factory=dict)
    events: list[object] = field(default_factory=list)
    accept_items: set[int] | None = None
    decline: str | None = None

    def step(self, now: float = 0.0, *, drop_after: int | None = None) -> int:
        """Move messages and events until quiet; returns messages moved (stops at drop_after)."""
        moved = 0
        while True:
            progress = False
            for ev in self.sender.events():
                self.events.append(ev)
                if isinstance(ev, t.NeedData):
                    chunk = self.files[ev.index][ev.offset : ev.offset + ev.length]
                    self.sender.data_ready(ev.index, ev.offset, chunk, now)
                progress = True
            for ev in self.receiver.events():
                self.events.append(ev)
                self._receiver_event(ev, now)
                progress = True
            for msg in self.sender.outgoing():
                if drop_after is not None and moved >= drop_after:
                    return moved
                if isinstance(msg, m.Data):
                    self.sent.append((msg.index, msg.offset, len(msg.data)))
                self.receiver.receive_bytes(codec.encode(msg), now)
                moved += 1
                progress = True
            for msg in self.receiver.outgoing():
                if drop_after is not None and moved >= drop_after:
                    return moved
                self.sender.receive_bytes(codec.encode(msg), now)
                moved += 1
                progress = True
            if not progress:
                return moved

    def _receiver_event(self, ev: object, now: float) -> None:
        r, disk = self.receiver, self.disk
        if isinstance(ev, t.OfferReceived):
            if self.decline:
                r.decline(self.decline, "no", now)
            elif disk.inbox:
                r.already_delivered(now)
            else:
                wanted = self.accept_items or {i.index for i in ev.manifest.items}
                r.accept({i: disk.checkpoint.get(i, 0) for i in wanted}, now)
        elif isinstance(ev, t.WriteData):
            buf = disk.data.setdefault(ev.index, bytearray())
            del buf[ev.offset :]
            buf += ev.data
            disk.checkpoint[ev.index] = ev.offset + len(ev.data)
            r.checkpoint_done(ev.index, disk.checkpoint[ev.index], now)
        elif isinstance(ev, t.ItemComplete):
            got = bytes(disk.data.get(ev.index, b""))
            assert r.manifest is not None
            want = r.manifest.items[ev.index].sha256
            r.item_verified(ev.index, hashlib.sha256(got).digest() == want, now)
        elif isinstance(ev, t.Commit):
            disk.inbox = True
            r.committed(now)


def connect(files: list[bytes], disk: Disk, **kw: object) -> Run:
    offer, manifest = make_offer(files)
    s = t.SenderCore(hello(SENDER), offer, manifest, now=0, window=256 * 1024)
    r = t.ReceiverCore(hello(RECEIVER), now=0)
    run = Run(s, r, files, disk, **kw)  # type: ignore[arg-type]
    r.start(0)
    s.start(0)
    return run


FILES = [b"a" * 1000, bytes(range(256)) * 1000, b"", b"z" * 200_000]


def test_full_transfer_then_resumed() -> None:
    disk = Disk()
    run = connect(FILES, disk)
    run.step()
    assert run.sender.state == t.State.DELIVERED
    assert run.receiver.state == t.State.DELIVERED
    assert [bytes(disk.data.get(i, b"")) for i in range(len(FILES))] == FILES
    assert disk.inbox
    assert all(n <= m.MAX_CHUNK for _, _, n in run.sent)
    run.receiver.resumed(1.0)
    run.step()
    assert run.sender.finished
    assert str(run.sender.state) == "resumed"
    assert any(isinstance(e, t.Resumed) for e in run.events)


def test_selective_accept_sends_only_chosen_items() -> None:
    disk = Disk()
    run = connect(FILES, disk, accept_items={0, 2})
    run.step()
    assert run.sender.state == t.State.DELIVERED
    assert {i for i, _, _ in run.sent} == {0}
    assert 3 not in disk.data


def test_decline_stops_everything() -> None:
    run = connect(FILES, Disk(), decline="handoff-disabled")
    run.step()
    assert run.sender.state == t.State.DECLINED
    assert run.sent == []
    assert t.Declined(reason="handoff-disabled", message="no") in run.events


def test_duplicate_handoff_is_idempotent() -> None:
    disk = Disk()
    connect(FILES, disk).step()
    again = connect(FILES, disk)
    again.step()
    assert again.sender.state == t.State.DELIVERED
    assert again.sent == []


def test_cancel_by_sender_mid_transfer() -> None:
    disk = Disk()
    run = connect(FILES, disk)
    run.step(drop_after=6)
    run.sender.cancel("user", 1.0)
    run.step()
    assert run.sender.state == t.State.CANCELLED
    assert run.receiver.state == t.State.CANCELLED
    assert t.Cancelled(reason="user", by_peer=True) in run.events


def test_hash_mismatch_fails_and_blames_peer() -> None:
    files = [b"abc" * 100]
    disk = Disk()
    offer, manifest = make_offer(files)
    s = t.SenderCore(hello(SENDER), offer, manifest, now=0)
    r = t.ReceiverCore(hello(RECEIVER), now=0)
    run = Run(s, r, [b"abd" * 100], disk)
    r.start(0)
    s.start(0)
    run.step()
    assert r.state == t.State.FAILED
    failed = [e for e in run.events if isinstance(e, t.Failed)]
    assert failed[0].code == "hash-mismatch"
    assert s.state == t.State.FAILED


@pytest.mark.parametrize(
    ("msg", "code"),
    [
        (m.Data(handoff_id="H1", index=0, offset=0, data=b"x"), "unexpected-message"),
        (m.Ack(handoff_id="H1", index=0, offset=5), "unexpected-message"),
        (m.Delivered(handoff_id="H1"), "unexpected-message"),
    ],
)
def test_out_of_state_messages_are_protocol_errors(msg: object, code: str) -> None:
    r = t.ReceiverCore(hello(RECEIVER), now=0)
    r.start(0)
    r.outgoing()
    r.receive(msg, 0)
    assert r.state == t.State.FAILED
    (failed,) = [e for e in r.events() if isinstance(e, t.Failed)]
    assert failed.code == code
    assert failed.blame is Blame.PEER
    assert isinstance(r.outgoing()[-1], m.Error)


def test_gap_overflow_and_bad_ack_are_refused() -> None:
    run = connect([b"x" * 100], Disk())
    run.step(drop_after=4)  # hello, offer, hello, accept
    r = run.receiver
    r.receive(m.Data(handoff_id="H1", index=0, offset=50, data=b"y"), 0)
    assert [e.code for e in r.events() if isinstance(e, t.Failed)] == ["data-gap"]

    run = connect([b"x" * 100], Disk())
    run.step(drop_after=4)
    run.receiver.receive(m.Data(handoff_id="H1", index=0, offset=0, data=b"y" * 101), 0)
    assert [e.code for e in run.receiver.events() if isinstance(e, t.Failed)] == ["data-overflow"]

    run = connect([b"x" * 100], Disk())
    run.step(drop_after=4)
    run.sender.receive(m.Ack(handoff_id="H1", index=0, offset=100), 0)
    run.sender.events()
    assert run.sender.state in {t.State.STREAMING, t.State.AWAIT_DELIVERED, t.State.FAILED}
    run.sender.receive(m.Ack(handoff_id="H1", index=7, offset=1), 0)
    assert run.sender.state == t.State.FAILED


def test_garbage_bytes_fail_cleanly() -> None:
    r = t.ReceiverCore(hello(RECEIVER), now=0)
    r.start(0)
    r.receive_bytes(b"\xc1\xc1", 0)
    assert r.state == t.State.FAILED


def test_idle_timeout_and_pings() -> None:
    s = t.SenderCore(hello(SENDER), *make_offer([b"x"]), now=0)
    s.start(0)
    s.outgoing()
    nt = s.next_timer()
    assert nt == t.PING_INTERVAL
    s.timer(nt)
    assert isinstance(s.outgoing()[0], m.Ping)
    s.timer(t.IDLE_TIMEOUT + 1)
    assert s.state == t.State.FAILED
    assert s.next_timer() is None


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=6), st.data())
def test_drop_and_reconnect_never_resends_acked_bytes(cuts: list[int], data: st.DataObject) -> None:
    files = [
        data.draw(st.binary(min_size=0, max_size=150_000)),
        b"q" * data.draw(st.integers(0, 300_000)),
    ]
    disk = Disk()
    acked: dict[int, int] = {}
    for cut in [*cuts, None]:
        run = connect(files, disk)
        run.step(drop_after=cut)
        # Nothing the receiver had acknowledged before this connection was sent again.
        for index, offset, _length in run.sent:
            assert offset >= acked.get(index, 0)
        acked = {i: max(acked.get(i, 0), o) for i, o in run.sender.acked.items()}
        if run.sender.state == t.State.DELIVERED:
            break
    assert run.sender.state == t.State.DELIVERED
    assert [bytes(disk.data.get(i, b"")) for i in range(len(files))] == files
