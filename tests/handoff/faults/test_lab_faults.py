"""The lab fault suite, part 1: loss, a link down, restarts, a full disk and load, each ending
with zero data lost (the world and its layout: tests/handoff/faults/world.py)."""

from __future__ import annotations

import asyncio

import pytest

from handoffd.handoff.link import WINDOW
from handoffd.handoff.policy import DISK_MARGIN
from tests.handoff.faults.world import (
    DEVICES,
    ENDED,
    RATE,
    Pocket,
    Sent,
    Stick,
    World,
    acked_bytes,
    finish,
    measure_clean_tx,
    publish_session,
    resend_bound,
    send_session,
    session_state,
)
from tests.handoff.helpers import checkpoints, wait_state
from tests.handoff.labkit import (
    MiB,
    WireMeter,
    fill,
    free_bytes,
    kill_hard,
    terminate_all,
)

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]


# ---------------------------------------------------------------- 1. loss


@pytest.mark.slow
@pytest.mark.asyncio
async def test_5_percent_random_loss_for_the_whole_transfer_completes(world: World) -> None:
    with world.host("desk").fault("loss", 5):  # in and out of the desk: every packet of it
        sent = await send_session(world, "laptop", "desk", "loss", {"lossy.bin": 16 * MiB})
        done = await finish(world, sent, within=300)
    print(f"5% loss: attempts {done['attempts']}, wire {done['wire']}")


# ---------------------------------------------------------------- 2. link down


@pytest.mark.slow
@pytest.mark.asyncio
async def test_link_down_10s_mid_transfer_completes_without_resending_acknowledged_bytes(
    world: World,
) -> None:
    size = 32 * MiB
    desk = world.host("desk")
    with desk.fault("rate_limit", RATE):
        clean_tx = await measure_clean_tx(world, size)
        meter = WireMeter(world.host("laptop")).start()
        sent = await send_session(world, "laptop", "desk", "cut10", {"cut.bin": size}, messages=0)
        acked_at_cut = await acked_bytes(world, sent, size // 3)
        with desk.fault("link_down"):
            held_at_cut = sum(checkpoints(world.daemons["desk"], sent.handoff_id).values())
            await asyncio.sleep(10)
            assert await session_state(world, sent) == "active"
        done = await finish(world, sent, within=300)
    a_tx = meter.read()[1]
    # The source only ever counted as done what the target had made durable.
    assert acked_at_cut <= held_at_cut < size
    assert held_at_cut > WINDOW + MiB
    if done["attempts"] > 1:  # a new connection resumed from what the target held
        assert done["wire"]["bytes_already_held"] >= held_at_cut, done
    bound = resend_bound(clean_tx, size)
    print(f"link down 10 s: attempts {done['attempts']}, held at cut {held_at_cut} B, "
          f"laptop tx {a_tx} B, clean run {clean_tx} B, bound {bound} B")  # fmt: skip
    # Re-sending what was acknowledged at the cut (>= a third) would cost >= 10 MiB more.
    assert a_tx <= bound, (a_tx, clean_tx, done)


# ---------------------------------------------------------------- 3. and 4. restarts


@pytest.mark.slow
@pytest.mark.asyncio
async def test_source_killed_mid_transfer_and_restarted_carries_on(world: World) -> None:
    size = 32 * MiB
    laptop = world.daemons["laptop"]
    with world.host("desk").fault("rate_limit", RATE):
        sent = await send_session(world, "laptop", "desk", "srckill", {"k.bin": size})
        acked = await acked_bytes(world, sent, 8 * MiB)
        kill_hard(laptop)
        await asyncio.sleep(1)
        durable = sum(checkpoints(world.daemons["desk"], sent.handoff_id).values())
        assert acked <= durable < sent.total
        laptop.start()  # same host, same home: the outgoing handoff carries on by itself
        assert await session_state(world, sent) == "active"
        done = await finish(world, sent, within=300)
    assert done["attempts"] >= 2, done
    # The new attempt resumed from what the desk held and sent only the rest.
    assert done["wire"]["bytes_already_held"] >= acked, done
    print(f"source SIGKILL: acked {acked} B, durable {durable} B, final {done['wire']}")


@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
async def test_both_daemons_restarted_mid_transfer_completes(world: World, how: str) -> None:
    size = 32 * MiB
    laptop, desk = world.daemons["laptop"], world.daemons["desk"]
    with world.host("desk").fault("rate_limit", RATE):
        sent = await send_session(world, "laptop", "desk", f"both-{how}", {"b.bin": size})
        acked = await acked_bytes(world, sent, 8 * MiB)
        if how == "sigterm":
            await asyncio.to_thread(terminate_all, [laptop, desk])
        else:
            kill_hard(desk)
            kill_hard(laptop)
        durable = sum(checkpoints(desk, sent.handoff_id).values())
        assert acked <= durable < sent.total
        desk.start()
        laptop.start()
        assert await session_state(world, sent) == "active"
        done = await finish(world, sent, within=300)
    assert done["attempts"] >= 2, done
    # The desk re-opened its partial file at the checkpoint: exactly that was not sent again.
    assert done["wire"]["bytes_already_held"] == durable, done
    assert done["wire"]["data_bytes_sent"] == sent.total - durable, done
    print(f"both {how}: acked {acked} B, durable {durable} B, final {done['wire']}")


# ---------------------------------------------------------------- 5. disk full


@pytest.mark.slow
@pytest.mark.asyncio
async def test_target_disk_full_declined_clearly_and_nothing_lost(
    world: World, pocket: Pocket
) -> None:
    laptop = world.host("laptop")
    async with world.client("laptop") as a, world.client("pocket") as p:
        # (a) A document larger than the free space (with the receiver's margin): declined at
        # once, with the reason, before any byte of it crossed.
        free = free_bytes(pocket.disk)
        big = 80 * MiB
        assert big + DISK_MARGIN > free
        meter = WireMeter(laptop).start()
        sent = await send_session(world, "laptop", "pocket", "too-big", {"big.bin": big})
        done = await wait_state(a, sent.handoff_id, ENDED, 120)
        a_tx = meter.read()[1]
        assert done["state"] == "declined", done
        assert done["error"]["code"] == "no-disk-space", done
        assert done["attempts"] == 1, done  # a decline is final
        assert done["wire"]["data_bytes_sent"] == 0, done
        assert a_tx < 4 * MiB, a_tx
        assert (await a.session(sent.session_id)).state == "active"
        theirs = await p.handoff(sent.handoff_id)
        assert (theirs.direction, theirs.state) == ("in", "declined")
        assert theirs.error is not None
        assert theirs.error["code"] == "no-disk-space"
        print(f"disk full (a): {done['error']}")

        # (b) Space that runs out mid-transfer: the tmpfs is filled from outside once the
        # transfer is under way. The receiver fails the exchange on ENOSPC; the source's retry
        # is then declined for want of space: a clear end, not a retry loop.
        size = 24 * MiB
        assert size + DISK_MARGIN < free_bytes(pocket.disk)
        with world.lab.hosts[4].fault("rate_limit", RATE):
            sent = await send_session(world, "laptop", "pocket", "runs-out", {"r.bin": size})
            await acked_bytes(world, sent, 4 * MiB)
            filler = pocket.disk / "filler"
            taken = await asyncio.to_thread(fill, filler)
            assert free_bytes(pocket.disk) < MiB
            done = await wait_state(a, sent.handoff_id, ENDED, 180)
        assert done["state"] == "declined", done
        assert done["error"]["code"] == "no-disk-space", done
        assert done["attempts"] <= 3, done
        assert (await a.session(sent.session_id)).state == "active"  # nothing lost
        theirs = await p.handoff(sent.handoff_id)
        assert theirs.state == "declined", theirs
        print(f"disk full (b): filled {taken} B; source: attempts {done['attempts']}, "
              f"{done['error']}; target: {theirs.error}")  # fmt: skip
        assert "receive failed on disk" in pocket.daemon.log_text()
        held = pocket.disk / "partial" / sent.handoff_id
        kept = sum(f.stat().st_size for f in held.iterdir()) if held.exists() else 0
        print(f"disk full (b): partial bytes kept on the target after the decline: {kept} B")

        # Space freed: a new handoff of the same session goes through.
        filler.unlink()
        again = await a.send(sent.session_id, "pocket")
    await finish(
        world, Sent("laptop", "pocket", sent.session_id, again.id, sent.digests, sent.total)
    )


@pytest.mark.asyncio
async def test_target_home_on_a_full_disk_ends_clearly_stays_up_and_recovers(
    world: World, stick: Stick
) -> None:
    """The disk holding the target's whole home fills mid-transfer: its partial file and its
    state database (``database or disk is full``) can no longer grow. The handoff ends clearly:
    the retry is declined for want of space, not retried in a loop; the target keeps answering
    and logs why; once space is freed the session goes through; a restart afterwards finds the
    target's identity and state intact.

    Fails now: the receiver's failure handler records ``retrying`` in the full database, which
    raises (StoreError ``store-full``): the receiving task dies with a traceback ("handoff
    engine task failed") before it closes the link, and the incoming record stays
    ``transferring``; the decline of the retry works only while SQLite finds a page to write."""
    import sqlite3

    size = 16 * MiB
    assert size + DISK_MARGIN < free_bytes(stick.disk)
    async with world.client("laptop") as a, world.client("stick") as t:
        before = await t.request("GET", "/v1/status")
        with world.lab.hosts[4].fault("rate_limit", RATE):
            sent = await send_session(world, "laptop", "stick", "home-full", {"h.bin": size})
            await acked_bytes(world, sent, 4 * MiB)
            filler = stick.disk / "filler"
            await asyncio.to_thread(fill, filler)
            assert free_bytes(stick.disk) < MiB
            done = await wait_state(a, sent.handoff_id, ENDED, 180)
            # Alive and answering, its disk still full.
            assert stick.daemon.running()
            status = await t.request("GET", "/v1/status")
            assert status["device_id"] == stick.device_id, status
            theirs = await t.handoff(sent.handoff_id)
        print(f"home full: source {done['state']}, attempts {done['attempts']}, "
              f"{done['error']}; target {theirs.state}, {theirs.error}")  # fmt: skip
        assert done["state"] == "declined", done
        assert done["error"]["code"] == "no-disk-space", done
        assert done["attempts"] <= 3, done
        assert (await a.session(sent.session_id)).state == "active"
        assert (theirs.direction, theirs.state) == ("in", "declined"), theirs
        assert theirs.error is not None
        assert theirs.error["code"] == "no-disk-space", theirs
        assert not (stick.disk / "partial" / sent.handoff_id).exists()
        log = stick.daemon.log_text()
        lines = [x for x in log.splitlines() if "receive failed on" in x or "not recorded" in x]
        print("home full: target log:", *lines, sep="\n  ")
        assert any("receive failed on" in x for x in lines), log
        assert ' exc="Traceback' not in log, log

        # Space freed: a new handoff of the same session goes through.
        filler.unlink()
        again = await a.send(sent.session_id, "stick")
    await finish(
        world, Sent("laptop", "stick", sent.session_id, again.id, sent.digests, sent.total)
    )

    # Restarted afterwards: the same identity and state, the database sound.
    async with world.client("stick") as t:
        inbox = [(e.id, e.state) for e in await t.inbox()]
        handoffs = {h.id: h.state for h in await t.handoffs()}
    await asyncio.to_thread(stick.daemon.stop)
    db = sqlite3.connect(stick.daemon.paths.state_db)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        db.close()
    await asyncio.to_thread(stick.daemon.start)
    async with world.client("stick") as t:
        after = await t.request("GET", "/v1/status")
        for key in ("device_id", "device_name", "paired", "account_id", "server_url"):
            assert after[key] == before[key], (key, before, after)
        assert [(e.id, e.state) for e in await t.inbox()] == inbox
        assert {h.id: h.state for h in await t.handoffs()} == handoffs
    assert ' exc="Traceback' not in stick.daemon.log_text()


# ---------------------------------------------------------------- 6. load


@pytest.mark.slow
@pytest.mark.asyncio
async def test_20_concurrent_handoffs_among_three_devices_all_arrive_intact(
    world: World,
) -> None:
    directions = [(s, d) for s in DEVICES for d in DEVICES if s != d]  # all six
    plan = [(directions[i % len(directions)], i) for i in range(20)]
    published = await asyncio.gather(
        *(
            publish_session(world, src, f"load-{i}", {f"doc-{i}.bin": (1 + i % 3) * MiB})
            for (src, _), i in plan
        )
    )

    async def send(src: str, dst: str, session_id: str) -> str:
        async with world.client(src) as c:
            return (await c.send(session_id, dst)).id

    # All twenty started at once, in all six directions.
    handoff_ids = await asyncio.gather(
        *(send(src, dst, sid) for ((src, dst), _), (sid, _, _) in zip(plan, published, strict=True))
    )
    sents = [
        Sent(src, dst, sid, hid, digests, total)
        for ((src, dst), _), (sid, digests, total), hid in zip(
            plan, published, handoff_ids, strict=True
        )
    ]
    results = await asyncio.gather(*(finish(world, s, within=420) for s in sents))
    attempts = sorted(r["attempts"] for r in results)
    print(f"20 concurrent: {sum(s.total for s in sents)} B in all; attempts {attempts}")
