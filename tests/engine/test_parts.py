"""The engine's small parts alone: supervision, the task set, the transition table, timings,
the schema migration, and a link pair with its drivers over in-memory channels."""

from __future__ import annotations

import asyncio
import gc
import logging
import sqlite3
import time
import warnings
from pathlib import Path

import pytest

from handoffd import identity
from handoffd.errors import ConfigError, HandoffError, TransportError
from handoffd.handoff.driver import run_receiver, run_sender
from handoffd.handoff.driver_events import (
    Announce,
    Checkpoint,
    Commit,
    Delivered,
    OfferReceived,
    ReceiverEvent,
    Resumed,
    SenderEvent,
    Verdict,
)
from handoffd.handoff.link import IncomingExchange, Link, LinkEvent, make_hello
from handoffd.handoff.offer import build_manifest, new_handoff_id, sign_offer
from handoffd.handoff.records import IllegalTransitionError, check_transition
from handoffd.handoff.staging import Staging
from handoffd.handoff.timings import Timings
from handoffd.items import Item
from handoffd.store import MIGRATIONS, Store
from handoffd.store_engine import ENGINE_TABLES
from handoffd.tasks import TaskSet, supervise
from handoffd.transport.memory import MemoryChannel, channel_pair
from tests.transport.helpers import Account


@pytest.mark.asyncio
async def test_supervise_restarts_a_crashed_loop_and_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[int] = []
    slept: list[float] = []

    async def loop() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError("boom")

    async def sleep(delay: float) -> None:
        slept.append(delay)

    with caplog.at_level(logging.ERROR, logger="handoffd.tasks"):
        await supervise(loop, "flaky", base=1.0, cap=8.0, sleep=sleep)
    assert len(runs) == 3  # restarted twice, then it ended cleanly
    assert len(slept) == 2
    assert 0.5 <= slept[0] <= 1.0
    assert 1.0 <= slept[1] <= 2.0  # the backoff grows
    crashes = [r for r in caplog.records if "loop crashed" in r.getMessage()]
    assert len(crashes) == 2
    assert all(r.exc_info is not None for r in crashes)  # with the traceback


@pytest.mark.asyncio
async def test_supervise_lets_cancellation_through() -> None:
    started = asyncio.Event()

    async def loop() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(supervise(loop, "forever"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.asyncio
async def test_task_set_owns_logs_and_closes(caplog: pytest.LogCaptureFixture) -> None:
    tasks = TaskSet("t")
    hold = asyncio.Event()
    waiting = tasks.spawn(hold.wait(), "waits")

    async def fail() -> None:
        raise RuntimeError("bad")

    with caplog.at_level(logging.ERROR, logger="handoffd.tasks"):
        failed = tasks.spawn(fail(), "fails")
        await asyncio.wait([failed])
    assert any("task failed task=fails" in r.getMessage() for r in caplog.records)
    assert len(tasks) == 1
    await tasks.close()
    assert waiting.cancelled()
    assert len(tasks) == 0
    coro = hold.wait()
    with pytest.raises(HandoffError):
        tasks.spawn(coro, "late")


@pytest.mark.asyncio
async def test_task_set_bound_to_a_group_runs_there() -> None:
    tasks = TaskSet("t")
    done = asyncio.Event()

    async def mark() -> None:
        done.set()

    async with asyncio.TaskGroup() as tg:
        tasks.bind(tg)
        tasks.spawn(mark(), "mark")
    assert done.is_set()


def test_transitions_are_a_table() -> None:
    check_transition("out", "pending", "connecting")
    check_transition("out", "retrying", "connecting")
    check_transition("out", "transferring", "delivered")
    check_transition("out", "failed", "resumed")  # a notice after a lost delivered
    check_transition("in", "transferring", "retrying")
    check_transition("in", "delivered", "resumed")
    check_transition("in", "delivered", "delivered")
    for direction, before, after in [
        ("out", "resumed", "connecting"),
        ("out", "delivered", "retrying"),
        ("out", "cancelled", "connecting"),
        ("in", "resumed", "transferring"),
        ("in", "delivered", "cancelled"),
        ("sideways", "pending", "delivered"),
    ]:
        with pytest.raises(IllegalTransitionError):
            check_transition(direction, before, after)


def test_timings_from_the_environment() -> None:
    t = Timings.from_env(
        {
            "HANDOFF_MAX_ATTEMPTS": "3",
            "HANDOFF_WARM_IDLE": "0",
            "HANDOFF_DIRECT_HEAD_START": "0.5",
            "HANDOFF_STALL_TIMEOUT": "4",
            "HANDOFF_DISK_FREE_CAP": "1000",
            "HANDOFF_REFUSED_EVENT_INTERVAL": "2",
            "UNRELATED": "x",
        }
    )
    assert (t.max_attempts, t.warm_idle, t.head_start, t.stall_timeout) == (3, 0.0, 0.5, 4.0)
    assert (t.disk_free_cap, t.refused_event_interval) == (1000, 2.0)
    assert Timings.from_env({}) == Timings()
    with pytest.raises(ConfigError):
        Timings.from_env({"HANDOFF_BACKOFF_BASE": "soon"})


def test_an_existing_state_db_gets_the_engine_tables_as_migration_2(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    try:
        with db:  # a state.db of before: schema 1, the engine's tables made outside it
            for statement in MIGRATIONS[0].split(";"):
                if statement.strip():
                    db.execute(statement)
            for statement in ENGINE_TABLES.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute("PRAGMA user_version = 1")
            db.execute("INSERT INTO engine_expired (id, kind, expired_at) VALUES ('x', 'inbox', 1)")
    finally:
        db.close()
    store = Store.open(path)
    try:
        with store.transaction() as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 2
            kept = conn.execute("SELECT kind FROM engine_expired WHERE id = 'x'").fetchone()
        assert kept == ("inbox",)
    finally:
        store.close()


# ---------------------------------------------------------------- a link pair and its drivers


class _Receiver:
    """A receiver consumer that accepts everything from 0 and records what it saw."""

    def __init__(self, staging: Staging) -> None:
        self.staging = staging
        self.seen: list[ReceiverEvent] = []
        self.committed = asyncio.Event()
        self.partial_files: list[str] = []

    async def decide(self, event: OfferReceived) -> Verdict:
        items = event.manifest.items
        return Verdict(resume={i.index: 0 for i in items}, names={i.index: i.name for i in items})

    async def handle(self, event: ReceiverEvent) -> None:
        self.seen.append(event)
        if isinstance(event, Commit):
            hid = event.manifest.handoff_id
            self.partial_files = sorted(p.name for p in self.staging.partial_dir(hid).iterdir())
            await asyncio.to_thread(
                self.staging.commit, hid, sorted(event.names.items()), {"id": hid}, event.held
            )
            self.committed.set()


def _peer(account: Account) -> tuple[identity.PeerIdentity, object]:
    dev = account.device()
    peer = identity.PeerIdentity(
        device_id=dev.local.device_id,
        account_id=account.trust.account_id,
        serial=dev.cert.serial_number,
        not_after=dev.cert.not_valid_after_utc,
        cert=dev.cert,
    )
    return peer, dev


@pytest.mark.asyncio
async def test_a_sender_and_a_receiver_driver_over_a_memory_pair(tmp_path: Path) -> None:
    account = Account()
    (pa, a), (pb, _b) = _peer(account), _peer(account)
    ours, theirs = channel_pair("direct", pa, pb)
    staging = Staging(tmp_path / "partial", tmp_path / "inbox")
    receiver = _Receiver(staging)
    incoming: asyncio.Queue[IncomingExchange] = asyncio.Queue()

    def on_b_event(event: LinkEvent) -> None:
        if isinstance(event, IncomingExchange):
            incoming.put_nowait(event)

    link_a = Link(ours, on_event=lambda _e: None, clock=time.monotonic)
    link_b = Link(theirs, on_event=on_b_event, clock=time.monotonic)
    link_a.start()
    link_b.start()
    payload = b"p" * (3 * 1024 * 1024 + 17)
    manifest, sources = build_manifest(
        handoff_id=new_handoff_id(),
        session_id=new_handoff_id(),
        app_id="org.example.x",
        title="t",
        context={},
        items=[Item.of_data("document", "d.bin", payload), Item.of_text("message", "m", "hi")],
        sender=pa.device_id,
        recipient=pb.device_id,
        now=time.time(),
    )
    sent: list[SenderEvent] = []

    async def sender_consumer(event: SenderEvent) -> None:
        sent.append(event)

    async def receive() -> None:
        started = await incoming.get()
        await run_receiver(
            link_b,
            started.exchange,
            started.first,
            hello=make_hello(pb.device_id, account.trust),
            staging=staging,
            consumer=receiver,
            stall=30,
            resumed_wait=30,
        )

    async with asyncio.TaskGroup() as tg:
        rx = tg.create_task(receive())
        send = tg.create_task(
            run_sender(
                link_a,
                hello=make_hello(pa.device_id, account.trust),
                offer=sign_offer(a.key, a.local.cert_der, manifest),  # type: ignore[attr-defined]
                manifest=manifest,
                sources=sources,
                consumer=sender_consumer,
                resumed_wait=30,
                stall=30,
            )
        )
        await asyncio.wait_for(receiver.committed.wait(), 30)
        # The app resumed: tell the source through the receiver's driver.
        ex = link_b.exchange
        assert ex is not None
        assert await asyncio.wait_for(ex.ask_resumed(), 10) is True
        report = await send
        await rx
    assert report.data_bytes == len(payload) + 2
    kinds = [type(e) for e in sent]
    assert Delivered in kinds
    assert kinds[-1] is Resumed
    checkpoints = [e for e in receiver.seen if isinstance(e, Checkpoint)]
    assert checkpoints  # durable before acknowledged
    # The small item was held in memory: no partial file, no checkpoint, written by the commit.
    assert {e.index for e in checkpoints} == {0}
    assert receiver.partial_files == ["0"]
    inbox = staging.inbox_dir(manifest.handoff_id)
    assert (inbox / "d.bin").read_bytes() == payload
    assert (inbox / "m").read_bytes() == b"hi"
    assert (inbox / "m").stat().st_mode & 0o777 == 0o600
    # Committed, then announced once the sender was told delivered.
    order = [type(e) for e in receiver.seen if isinstance(e, (Commit, Announce))]
    assert order == [Commit, Announce]
    await link_a.close()
    await link_b.close()


@pytest.mark.asyncio
async def test_a_cut_channel_ends_both_drivers(tmp_path: Path) -> None:
    account = Account()
    (pa, a), (pb, _b) = _peer(account), _peer(account)
    ours, theirs = channel_pair("direct", pa, pb)
    ours.break_after = 200_000
    staging = Staging(tmp_path / "partial", tmp_path / "inbox")
    receiver = _Receiver(staging)
    incoming: asyncio.Queue[IncomingExchange] = asyncio.Queue()

    def on_b_event(event: LinkEvent) -> None:
        if isinstance(event, IncomingExchange):
            incoming.put_nowait(event)

    link_a = Link(ours, on_event=lambda _e: None, clock=time.monotonic)
    link_b = Link(theirs, on_event=on_b_event, clock=time.monotonic)
    link_a.start()
    link_b.start()
    manifest, sources = build_manifest(
        handoff_id=new_handoff_id(),
        session_id=new_handoff_id(),
        app_id="org.example.x",
        title="t",
        context={},
        items=[Item.of_data("document", "d.bin", b"q" * 2_000_000)],
        sender=pa.device_id,
        recipient=pb.device_id,
        now=time.time(),
    )

    async def nothing(_event: SenderEvent) -> None:
        return None

    async def receive() -> None:
        started = await incoming.get()
        await run_receiver(
            link_b,
            started.exchange,
            started.first,
            hello=make_hello(pb.device_id, account.trust),
            staging=staging,
            consumer=receiver,
            stall=30,
            resumed_wait=30,
        )

    rx = asyncio.create_task(receive())
    # The channel failing under the sender is a transport error: the outgoing flow retries it.
    with pytest.raises(TransportError) as err:
        await run_sender(
            link_a,
            hello=make_hello(pa.device_id, account.trust),
            offer=sign_offer(a.key, a.local.cert_der, manifest),  # type: ignore[attr-defined]
            manifest=manifest,
            sources=sources,
            consumer=nothing,
            resumed_wait=30,
            stall=30,
        )
    assert err.value.code == "channel-closed"
    await asyncio.wait_for(rx, 30)
    failed = [e for e in receiver.seen if type(e).__name__ == "Failed"]
    assert failed  # the receiver recorded the interruption (its record goes retrying)
    assert isinstance(ours, MemoryChannel)
    assert ours.closed
    await link_a.close()
    await link_b.close()


@pytest.mark.asyncio
async def test_a_task_cancelled_before_it_started_leaves_no_unawaited_coroutine() -> None:
    tasks = TaskSet("t")
    never = asyncio.Event()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tasks.spawn(never.wait(), "never-started")
        await tasks.close()  # cancels it before its first step
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]
