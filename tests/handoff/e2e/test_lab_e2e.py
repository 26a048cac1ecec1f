"""End to end in the lab, part 1: intact and resumed, selective transfer, faults (the world:
tests/handoff/e2e/world.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from handoffd.control.client import Item
from handoffd.handoff.link import WINDOW
from tests.handoff.e2e.world import (
    DOCS,
    SMALL_WIRE,
    World,
    clean_wire_cost,
    ensure_b_running,
    get_handoff,
    message_bytes,
    messages,
    resend_bound,
)
from tests.handoff.helpers import (
    checkpoints,
    sha256_file,
    wait_state,
    write_random,
)
from tests.handoff.labkit import (
    NOTES,
    MiB,
    WireMeter,
    kill_hard,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.lab


# ---------------------------------------------------------------- 1. intact and resumed


@pytest.mark.slow
@pytest.mark.asyncio
async def test_100_messages_and_1k_1m_50m_documents_arrive_intact_and_the_app_resumes(
    world: World,
) -> None:
    async with world.client(world.a) as a, world.client(world.b) as b:
        session = await a.publish(
            NOTES,
            "Lab trip",
            context={"draft": "book the train", "cursor": 42},
            items=[
                *messages(100),
                *(Item.of_path("document", n, p) for n, (p, _) in world.docs.items()),
            ],
        )
        h = await a.send(session.id, "desk")
        done = await wait_state(a, h.id, {"resumed", "failed", "declined", "cancelled"}, 240)
        assert done["state"] == "resumed", done
        assert done["path"] == "direct"
        total = message_bytes(100) + sum(DOCS.values())
        assert done["bytes_total"] == done["bytes_done"] == total
        assert done["error"] is None
        assert (await a.session(session.id)).state == "handed-off"

        entry = await b.inbox_entry(h.id)
        assert entry.state == "resumed"  # only the launched app confirms
        assert entry.context == {"draft": "book the train", "cursor": 42}
        assert entry.sender.device_id == world.a_id
        assert len(entry.items) == 103
        for item in entry.items:
            digest = await asyncio.to_thread(sha256_file, Path(item.path))
            assert digest == item.sha256
            if item.type == "document":
                assert digest == world.docs[item.name][1]  # equal to the source file
            else:
                text = await asyncio.to_thread(Path(item.path).read_text)
                assert text == f"message {int(item.name[4:7])}"
        incoming = await b.handoff(h.id)
        assert (incoming.direction, incoming.state) == ("in", "resumed")
        assert not (world.b.paths.partial / h.id).exists()

    # The example app itself was launched on the target, read the session and confirmed.
    async def app_said() -> str | None:
        out = world.b.out.read_text(errors="replace")
        return out if "notes: confirmed" in out and "'Lab trip'" in out else None

    out = await wait_for(app_said, within=30, what="the notes app's confirmation")
    assert "notes: 100 message(s), 3 document(s)" in out
    for name, (_, digest) in world.docs.items():
        assert f"document {name} {DOCS[name]} bytes sha256={digest}" in out


# ---------------------------------------------------------------- 2. selective transfer


@pytest.mark.asyncio
async def test_selective_transfer_sends_no_byte_of_unchosen_types(world: World) -> None:
    h0, h1, _ = world.hosts
    fifty, _ = world.docs["fifty-m.bin"]
    msg_bytes = message_bytes(100, "selective")
    async with world.client(world.a) as a, world.client(world.b) as b:
        session = await a.publish(
            "org.example.selective",  # no app registered: ends at delivered
            "selective",
            items=[*messages(100, "selective"), Item.of_path("document", "fifty-m.bin", fifty)],
        )

        async def run(types: list[str] | None) -> tuple[dict[str, Any], int, int]:
            sent, received = WireMeter(h0).start(), WireMeter(h1).start()
            h = await a.send(session.id, "desk", types=types)
            done = await wait_state(a, h.id, {"delivered", "resumed", "failed", "declined"})
            return done, sent.read()[1], received.read()[0]

        # The sender chooses messages only, while a 50 MiB document is in the session.
        done, a_tx, b_rx = await run(["message"])
        assert done["state"] == "delivered", done
        assert done["types"] == ["message"]
        assert done["bytes_total"] == done["bytes_done"] == msg_bytes
        assert done["wire"]["data_bytes_sent"] == msg_bytes
        assert done["wire"]["channel_bytes_sent"] < 256 * 1024
        print(f"selective (sender chose messages): laptop tx {a_tx} B, desk rx {b_rx} B")
        # The network agrees: far less than the document left the laptop or reached the desk.
        assert a_tx < SMALL_WIRE, a_tx
        assert b_rx < SMALL_WIRE, b_rx
        entry = await b.inbox_entry(done["id"])
        assert {i.type for i in entry.items} == {"message"}
        assert len(entry.items) == 100

        # The receiver accepts messages only; the sender offers everything.
        await b.update_settings(accept_types=["message"])
        try:
            done2, a_tx2, b_rx2 = await run(None)
        finally:
            await b.update_settings(accept_types=["*"])
        assert done2["state"] == "delivered", done2
        assert done2["bytes_total"] == msg_bytes  # of the items the receiver accepted
        assert done2["wire"]["data_bytes_sent"] == msg_bytes
        assert a_tx2 < SMALL_WIRE, a_tx2
        assert b_rx2 < SMALL_WIRE, b_rx2
        entry2 = await b.inbox_entry(done2["id"])
        assert [i.type for i in entry2.items] == ["message"] * 100

        # Control: with every type chosen and accepted, the document does cross.
        done3, a_tx3, b_rx3 = await run(None)
        assert done3["state"] == "delivered", done3
        assert done3["wire"]["data_bytes_sent"] == msg_bytes + 50 * MiB
        print(f"selective: receiver-filtered tx {a_tx2} B; control (all types) tx {a_tx3} B")
        assert a_tx3 > 50 * MiB
        assert b_rx3 > 50 * MiB


# ---------------------------------------------------------------- 4. faults


@pytest.mark.slow
@pytest.mark.asyncio
async def test_link_cut_for_3s_mid_transfer_completes_without_resending_acknowledged_bytes(
    world: World,
) -> None:
    h0, h1, _ = world.hosts
    size = 32 * MiB
    async with world.client(world.a) as a, world.client(world.b) as b:
        clean_tx = await clean_wire_cost(world, a, size)
        doc = world.root / "cut.bin"
        digest = await asyncio.to_thread(write_random, doc, size)
        session = await a.publish("org.example.cut", "cut", items=[Item.of_path("document", "cut.bin", doc)])  # fmt: skip
        meter = WireMeter(h0).start()
        h = await a.send(session.id, world.b_id)

        async def half_acknowledged() -> int | None:
            x = await get_handoff(a, h.id)
            return int(x["bytes_done"]) if x["bytes_done"] >= size // 2 else None

        acked_at_cut = await wait_for(
            half_acknowledged, within=120, what="half acknowledged", every=0.02
        )
        with h1.fault("link_down"):
            held_at_cut = sum(checkpoints(world.b, h.id).values())
            await asyncio.sleep(3)
        done = await wait_state(a, h.id, {"delivered", "resumed", "failed", "declined"}, 300)
        a_tx = meter.read()[1]
        assert done["state"] == "delivered", done
        assert done["bytes_done"] == done["bytes_total"] == size
        # The source only ever counted as done what the target had made durable.
        assert acked_at_cut <= held_at_cut < size
        wire = done["wire"]
        assert wire["bytes_already_held"] + wire["data_bytes_sent"] == size
        if done["attempts"] > 1:
            # A new connection resumed from at least what the target held durably at the cut.
            assert wire["bytes_already_held"] >= held_at_cut
        # Over all attempts, the laptop's interface sent at most one window more than a clean
        # run; re-sending the acknowledged half would have cost >= 16 MiB more.
        assert held_at_cut > WINDOW + MiB
        print(f"link cut: attempts {done['attempts']}, held at cut {held_at_cut} B, "
              f"laptop tx {a_tx} B, clean run {clean_tx} B, bound {resend_bound(clean_tx, size)} B")  # fmt: skip
        assert a_tx <= resend_bound(clean_tx, size), (a_tx, clean_tx, done)
        entry = await b.inbox_entry(h.id)
        assert await asyncio.to_thread(sha256_file, Path(entry.items[0].path)) == digest


@pytest.mark.slow
@pytest.mark.asyncio
async def test_target_killed_mid_transfer_and_restarted_completes_intact(world: World) -> None:
    h0, _, _ = world.hosts
    size = 32 * MiB
    try:
        async with world.client(world.a) as a:
            clean_tx = await clean_wire_cost(world, a, size)
            doc = world.root / "kill.bin"
            digest = await asyncio.to_thread(write_random, doc, size)
            session = await a.publish("org.example.kill", "kill", items=[Item.of_path("document", "kill.bin", doc)])  # fmt: skip
            meter = WireMeter(h0).start()
            h = await a.send(session.id, "desk")

            async def acked() -> int | None:
                x = await get_handoff(a, h.id)
                return int(x["bytes_done"]) if x["bytes_done"] >= 8 * MiB else None

            acked_before = await wait_for(acked, within=120, what="8 MiB acknowledged", every=0.02)
            kill_hard(world.b)
            durable = sum(checkpoints(world.b, h.id).values())
            assert acked_before <= durable < size
            await asyncio.sleep(1)
            world.b.start()  # same host, same home, same signaling port

            done = await wait_state(a, h.id, {"delivered", "resumed", "failed", "declined"}, 240)
            a_tx = meter.read()[1]
            assert done["state"] == "delivered", done
            assert done["attempts"] >= 2
            wire = done["wire"]
            assert wire["bytes_already_held"] == durable  # resumed from the checkpoints ...
            assert wire["data_bytes_sent"] == size - durable  # ... and sent only the rest
            print(f"SIGKILL: attempts {done['attempts']}, durable {durable} B, laptop tx {a_tx} B, "
                  f"clean run {clean_tx} B, bound {resend_bound(clean_tx, size)} B")  # fmt: skip
            assert a_tx <= resend_bound(clean_tx, size), (a_tx, clean_tx, done)
        async with world.client(world.b) as b:
            entry = await b.inbox_entry(h.id)
            assert entry.items[0].sha256 == digest
            got = await asyncio.to_thread(sha256_file, world.b.paths.inbox / h.id / "kill.bin")
            assert got == digest
            assert not (world.b.paths.partial / h.id).exists()
    finally:
        await ensure_b_running(world)


@pytest.mark.slow
@pytest.mark.asyncio
async def test_target_killed_on_the_data_channel_source_retries_on_missing_acks_then_completes(
    world: World,
) -> None:
    """The target vanishes mid-transfer on the data channel (no lane): the source's channel
    sees its SCTP data go unacknowledged and fails with ``peer-silent`` (not the transfer
    protocol's idle timeout, nor ICE consent); the handoff is ``retrying`` while the target
    is still down, and completes once it is back."""
    size = 32 * MiB
    try:
        async with world.client(world.a) as a:
            doc = world.root / "silent.bin"
            digest = await asyncio.to_thread(write_random, doc, size)
            session = await a.publish("org.example.kill", "silent", items=[Item.of_path("document", "silent.bin", doc)])  # fmt: skip
            h = await a.send(session.id, "desk")

            async def moving() -> bool | None:
                x = await get_handoff(a, h.id)
                assert x["state"] in ("pending", "connecting", "transferring"), x
                return True if x["path"] == "direct" and x["bytes_done"] >= 4 * MiB else None

            await wait_for(moving, within=120, what="4 MiB acknowledged directly", every=0.02)
            kill_hard(world.b)  # the target stays down until the source retries

            async def retrying() -> dict[str, Any] | None:
                x = await get_handoff(a, h.id)
                return x if x["state"] == "retrying" else None

            cur = await wait_for(retrying, within=120, what="the source retrying", every=0.05)
            # The channel's own failure (a send under way), or the link ending with it.
            why = f"{cur['error']['code']} {cur['error']['message']}"
            assert "peer-silent" in why, cur["error"]
            world.b.start()
            done = await wait_state(a, h.id, {"delivered", "resumed", "failed", "declined"}, 240)
            assert done["state"] == "delivered", done
            assert done["attempts"] >= 2, done
        async with world.client(world.b) as b:
            entry = await b.inbox_entry(h.id)
            assert entry.items[0].sha256 == digest
    finally:
        await ensure_b_running(world)


@pytest.mark.asyncio
async def test_server_stopped_lan_handoff_between_paired_devices_still_works(
    world: World,
) -> None:
    world.server.stop()
    try:
        async with world.client(world.a) as a, world.client(world.b) as b:
            session = await a.publish(NOTES, "offline", items=messages(3))
            h = await a.send(session.id, "desk")  # resolved from the device cache
            started = time.monotonic()
            done = await wait_state(a, h.id, {"resumed", "failed", "declined"}, 120)
            assert done["state"] == "resumed", (done, time.monotonic() - started)
            assert done["path"] == "direct"
            assert (await a.session(session.id)).state == "handed-off"
            assert (await b.inbox_entry(h.id)).state == "resumed"  # the app ran, server down
    finally:
        if not world.server.running():
            world.server.start()
