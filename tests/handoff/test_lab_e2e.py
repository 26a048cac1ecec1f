"""LAN handoff end to end in the network lab: real daemon processes in separate hosts (network
namespaces), real multicast discovery, real aiortc, a real server on a lab address.

Layout (one lab for the module, three hosts on one bridge):

- h0 198.18.0.1: ``handoff-server`` (port 8443) and "laptop" (the source, ``a``);
- h1 198.18.0.2: "desk" (the target, ``b``; LAN signaling on port 7711), with the example
  notes app registered as the launch command;
- h2 198.18.0.3: the devices that must be refused (another account, revoked, expired) and
  the rogue signaling client, each started for its test and stopped after it.

Byte counts come from two independent places: the engine's own counters in the handoff
record (``bytes_total``, ``wire``), and the kernel's counters of the hosts' lab interfaces
(every frame that left or reached a host), which prove what crossed the network regardless
of what the engine believes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from handoffd.control.client import HandoffClient, Item
from handoffd.errors import ApiError
from handoffd.handoff.link import WINDOW
from tests.handoff.helpers import (
    checkpoints,
    register_notes_app,
    sha256_file,
    wait_nearby,
    wait_state,
    write_random,
)
from tests.handoff.labkit import (
    NOTES,
    SIGNALING_PORT,
    LabDaemon,
    LabServer,
    MiB,
    WireMeter,
    kill_hard,
    pair_daemon,
    stop_quietly,
    write_expired_cert,
)
from tests.lab import Host, Lab
from tests.lab.fixtures import require_lab
from tests.server.helpers import create_account
from tests.support.waiting import wait_for

pytestmark = pytest.mark.lab

DOCS = {"one-k.bin": 1024, "one-m.bin": MiB, "fifty-m.bin": 50 * MiB}
SMALL_WIRE = 1 * MiB
# These tests follow transfers on the data channel and the relay (their wire counters, their
# faults): the receivers offer no LAN lane (tests/handoff/test_lab_lane.py has its own).
NO_LANE = {"HANDOFF_LANE_MIN_BYTES": "-1"}
"""Far below any document that must not cross: all the traffic of a handoff that sends no
document (signaling, DTLS, SCTP, messages, mDNS chatter of the moment) fits in it."""


@dataclass
class World:
    """The module's lab, server, source ``a`` (laptop, h0) and target ``b`` (desk, h1)."""

    lab: Lab
    root: Path
    server: LabServer
    account_id: str
    a: LabDaemon
    b: LabDaemon
    a_id: str
    b_id: str
    docs: dict[str, tuple[Path, str]]

    @property
    def hosts(self) -> tuple[Host, Host, Host]:
        """(h0, h1, h2)."""
        h0, h1, h2 = self.lab.hosts
        return h0, h1, h2

    def client(self, d: LabDaemon) -> HandoffClient:
        """An SDK client of ``d``."""
        return HandoffClient(d.socket, timeout=30)

    def daemon(self, name: str, host: Host, **env: str) -> LabDaemon:
        """A new (not started) daemon with its own home, in ``host``."""
        d = LabDaemon(self.root / name, env={**NO_LANE, **env}, host=host)
        d.home.mkdir(mode=0o700)
        return d

    @property
    def b_signaling(self) -> str:
        """The target's LAN signaling address."""
        return f"{self.hosts[1].address}:{SIGNALING_PORT}"


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    """One lab for the module (three hosts): setting it up takes most of ten seconds.

    Module-scoped, so it cannot use the function-scoped ``lab`` fixture; it does what that
    fixture does: skips where the lab cannot run, and closes the lab (every process in it
    stopped by PID, every namespace removed) whatever happens.
    """
    require_lab()
    lab = Lab.create(3)
    root = Path(tempfile.mkdtemp(prefix="hl", dir="/tmp"))
    try:
        h0, h1, _ = lab.hosts
        server = LabServer(root / "srv", host=h0).start()
        account_id = create_account(server.data, "lab")
        a = LabDaemon(root / "a", env=dict(NO_LANE), host=h0)
        b = LabDaemon(
            root / "b", env={**NO_LANE, "HANDOFF_SIGNALING_PORT": str(SIGNALING_PORT)}, host=h1
        )
        for d in (a, b):
            d.home.mkdir(mode=0o700)
            d.start()
        a_id = pair_daemon(server, a, "lab", "laptop")
        b_id = pair_daemon(server, b, "lab", "desk")
        wait_nearby(a, b_id)  # over real multicast on the lab bridge
        wait_nearby(b, a_id)
        register_notes_app(b)
        docs_dir = root / "docs"
        docs_dir.mkdir()
        docs = {name: (docs_dir / name, write_random(docs_dir / name, size)) for name, size in DOCS.items()}  # fmt: skip
        yield World(lab, root, server, account_id, a, b, a_id, b_id, docs)
    finally:
        lab.close()
        if not os.environ.get("HANDOFF_TEST_KEEP"):  # set it to read the daemons' logs
            shutil.rmtree(root, ignore_errors=True)


def _messages(n: int, prefix: str = "message") -> list[Item]:
    return [Item.of_text("message", f"msg-{i:03d}.txt", f"{prefix} {i}") for i in range(n)]


def _message_bytes(n: int, prefix: str = "message") -> int:
    return sum(len(f"{prefix} {i}".encode()) for i in range(n))


async def _get(client: HandoffClient, handoff_id: str) -> dict[str, Any]:
    h: dict[str, Any] = await client.request("GET", f"/v1/handoffs/{handoff_id}")
    return h


async def _ensure_b_running(world: World) -> None:
    """Restart the target if a failed test left it down (later tests need it)."""
    if not world.b.running():
        world.b.start()
        wait_nearby(world.a, world.b_id)


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
                *_messages(100),
                *(Item.of_path("document", n, p) for n, (p, _) in world.docs.items()),
            ],
        )
        h = await a.send(session.id, "desk")
        done = await wait_state(a, h.id, {"resumed", "failed", "declined", "cancelled"}, 240)
        assert done["state"] == "resumed", done
        assert done["path"] == "direct"
        total = _message_bytes(100) + sum(DOCS.values())
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
    msg_bytes = _message_bytes(100, "selective")
    async with world.client(world.a) as a, world.client(world.b) as b:
        session = await a.publish(
            "org.example.selective",  # no app registered: ends at delivered
            "selective",
            items=[*_messages(100, "selective"), Item.of_path("document", "fifty-m.bin", fifty)],
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


# ---------------------------------------------------------------- 3. declines and refusals


@pytest.mark.asyncio
async def test_declined_cleanly_when_handoff_is_disabled_on_the_target(world: World) -> None:
    h0, _, _ = world.hosts
    one_m, _ = world.docs["one-m.bin"]
    async with world.client(world.a) as a, world.client(world.b) as b:
        session = await a.publish(
            "org.example.x", "nope", items=[*_messages(3), Item.of_path("document", "d", one_m)]
        )
        await b.update_settings(handoff_enabled=False)
        try:
            meter = WireMeter(h0).start()
            h = await a.send(session.id, "desk")
            done = await wait_state(a, h.id, {"declined", "failed", "delivered", "resumed"})
            a_tx = meter.read()[1]
        finally:
            await b.update_settings(handoff_enabled=True)
        assert done["state"] == "declined"
        assert done["error"]["code"] == "handoff-disabled"
        assert done["attempts"] == 1  # a decline is final: no retries
        assert done["wire"]["data_bytes_sent"] == 0
        assert a_tx < SMALL_WIRE, a_tx
        assert (await a.session(session.id)).state == "active"  # the source keeps it
        theirs = await b.handoff(h.id)
        assert (theirs.direction, theirs.state) == ("in", "declined")
        assert theirs.error is not None
        assert theirs.error["code"] == "handoff-disabled"
        with pytest.raises(ApiError) as err:
            await b.inbox_entry(h.id)
        assert err.value.code == "inbox-not-found"
        assert not (world.b.paths.partial / h.id).exists()


@asynccontextmanager
async def _rogue_device(
    world: World, name: str, account: str, *, start: bool = True
) -> AsyncIterator[tuple[LabDaemon, str]]:
    """A daemon in h2 paired to ``account``, told where the desk's signaling port is."""
    d = world.daemon(name, world.hosts[2])
    try:
        d.start()
        device_id = pair_daemon(world.server, d, account, name)
        async with world.client(d) as c:
            await c.update_settings(unicast_peers=[world.b_signaling])
        yield d, device_id
    finally:
        stop_quietly(d)


async def _refused(
    world: World, sender: LabDaemon, target: str, peer_code: str, message: str
) -> dict[str, Any]:
    """``sender`` hands a session with a 1 MiB document to ``target``; the desk refuses it at
    the door. Checks that the refusal is visible on the source, logged with its code on the
    target, and that no session data crossed; returns the source's handoff."""
    _, _, h2 = world.hosts
    one_m, _ = world.docs["one-m.bin"]
    async with world.client(sender) as s, world.client(world.b) as b:
        before = {h.id for h in await b.handoffs()}
        inbox_before = {e.id for e in await b.inbox()}
        log_before = len(world.b.log_text())
        session = await s.publish(
            "org.example.x", "refused", items=[*_messages(3), Item.of_path("document", "d", one_m)]
        )  # fmt: skip
        meter = WireMeter(h2).start()
        started = time.time()
        h = await s.send(session.id, target)

        async def refused() -> dict[str, Any] | None:
            x = await _get(s, h.id)
            return x if x["error"] is not None else None

        seen: dict[str, Any] = await wait_for(refused, within=60, what="the refusal on the source")
        h2_tx = meter.read()[1]
        # An authentication refusal is final at once: retrying could only repeat it.
        assert seen["state"] == "failed", seen
        assert seen["attempts"] == 1, seen
        assert seen["error"]["code"] == "peer-refused", seen
        assert seen["error"]["reason"] == peer_code, seen
        assert message in seen["error"]["message"], seen
        assert seen["bytes_done"] == 0
        assert seen["wire"]["data_bytes_sent"] == 0
        assert (await s.session(session.id)).state == "active"
        # The target refused before anything of the session existed there.
        assert {h.id for h in await b.handoffs()} == before
        with pytest.raises(ApiError) as err:
            await b.handoff(h.id)
        assert err.value.code == "handoff-not-found"
        assert {e.id for e in await b.inbox()} == inbox_before
        assert not (world.b.paths.partial / h.id).exists()
        # The target's record of it: its status lists the refusal, and a log line has the code.
        assert f"offer refused: {peer_code}" in world.b.log_text()[log_before:]
        refusals = (await b.status()).raw["refused"]
        assert any(r["code"] == peer_code and r["at"] >= started for r in refusals), refusals
        # Nothing like the 1 MiB document left the refused device's host.
        assert h2_tx < SMALL_WIRE, h2_tx
        print(f"refused {peer_code}: {seen['state']} {seen['error']}; refused host tx {h2_tx} B")
        return seen


@pytest.mark.asyncio
async def test_refused_device_of_another_account(world: World) -> None:
    """Mallory (another account) dials the desk's signaling port by device id. Its hello is
    not the desk's account's: the desk proves nothing and never reads an offer, so mallory
    learns nothing of the desk and the desk nothing of mallory. Mallory cannot authenticate
    that refusal, so for it the attempt failed transiently (retrying); no session byte moves."""
    create_account(world.server.data, "other")
    async with (
        _rogue_device(world, "mallory", "other") as (mallory, _),
        world.client(mallory) as s,
        world.client(world.b) as b,
    ):
        before = {h.id for h in await b.handoffs()}
        log_before = len(world.b.log_text())
        session = await s.publish("org.example.x", "refused", items=_messages(3))
        h = await s.send(session.id, world.b_id)

        async def failed_once() -> dict[str, Any] | None:
            x = await _get(s, h.id)
            return x if x["error"] is not None else None

        seen = await wait_for(failed_once, within=60, what="the failed attempt on mallory")
        assert seen["state"] == "retrying", seen
        assert seen["bytes_done"] == 0
        assert "reason" not in seen["error"], seen  # nothing the desk said is believed

        async def logged() -> bool | None:
            text = world.b.log_text()[log_before:]
            return True if 'event="signaling hello refused" code=hello-refused' in text else None

        await wait_for(logged, within=30, what="the desk's log of the refused hello")
        assert "offer refused" not in world.b.log_text()[log_before:]
        assert {x.id for x in await b.handoffs()} == before
        await s.cancel(h.id)


@pytest.mark.asyncio
async def test_refused_revoked_device(world: World) -> None:
    async with _rogue_device(world, "lost", "lab") as (lost, lost_id):
        # Revoked while away, and the server out of its reach when it comes back: it does not
        # know (told by the server, it refuses to send at once: tests/cli/test_revocation.py),
        # so the desk must refuse it.
        lost.stop()
        async with world.client(world.b) as b:
            await b.revoke(lost_id)  # the desk revokes it: the desk holds the new CRL at once
            assert any(d.device_id == lost_id and d.revoked for d in await b.devices())
        world.server.stop()
        try:
            lost.start()
            await _refused(world, lost, world.b_id, "cert-revoked", "revoked")
        finally:
            stop_quietly(lost)
            if not world.server.running():
                world.server.start()


@pytest.mark.asyncio
async def test_refused_expired_device_certificate(world: World) -> None:
    async with _rogue_device(world, "old", "lab") as (old, _):
        old.stop()
        # Expired while the server is out of reach (otherwise the daemon renews it at start).
        world.server.stop()
        try:
            not_after = write_expired_cert(world.server.data, world.account_id, old.home)
            assert not_after < dt.datetime.now(dt.UTC)
            old.start()
            await _refused(world, old, world.b_id, "cert-expired", "expired")
            assert "certificate renewed" not in old.log_text()
        finally:
            stop_quietly(old)
            if not world.server.running():
                world.server.start()


@pytest.mark.asyncio
async def test_refused_tampered_replayed_and_misaddressed_signaling_envelopes(
    world: World,
) -> None:
    """A rogue process in h2 with the laptop's identity talks straight to the desk's signaling
    port: a genuine offer connects; the same bytes again, an offer whose SDP fingerprint was
    changed (with and without re-signing) and one addressed to another device are refused."""
    _, _, h2 = world.hosts
    async with world.client(world.b) as b:
        before = {h.id for h in await b.handoffs()}
        inbox_before = {e.id for e in await b.inbox()}
        log_before = len(world.b.log_text())
        started = time.time()
        argv = [sys.executable, "-m", "tests.handoff.labkit", "rogue", "--home", str(world.a.home),
                "--to", world.b_id, "--at", world.b_signaling]  # fmt: skip
        proc = await h2.spawn(
            argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()
        results = json.loads(out.decode().strip().splitlines()[-1])
        assert results == {
            "genuine": "connected",  # the same identity and path do work ...
            "replayed": "envelope-replayed",
            "tampered-fingerprint": "envelope-bad-signature",
            "resigned-fingerprint-mismatch": "sdp-fingerprint-mismatch",
            "wrong-recipient": "envelope-wrong-recipient",
        }
        log = world.b.log_text()[log_before:]
        for code in list(results.values())[1:]:
            assert f"offer refused: {code}" in log
        # Each refusal is visible in the desk's API too, with its reason.
        refused = [r for r in (await b.status()).raw["refused"] if r["at"] >= started]
        assert sorted(r["code"] for r in refused) == sorted(list(results.values())[1:]), refused
        assert {r["path"] for r in refused} == {"signaling"}
        assert {h.id for h in await b.handoffs()} == before
        assert {e.id for e in await b.inbox()} == inbox_before


# ---------------------------------------------------------------- 4. faults


async def _clean_wire_cost(world: World, a: HandoffClient, size: int) -> int:
    """Bytes the laptop's interface sends for an uninterrupted handoff of ``size`` bytes."""
    h0, _, _ = world.hosts
    doc = world.root / f"clean-{size}.bin"
    await asyncio.to_thread(write_random, doc, size)
    session = await a.publish("org.example.clean", "clean", items=[Item.of_path("document", "c.bin", doc)])  # fmt: skip
    meter = WireMeter(h0).start()
    h = await a.send(session.id, "desk")
    done = await wait_state(a, h.id, {"delivered", "resumed", "failed", "declined"}, 240)
    assert done["state"] == "delivered", done
    assert done["attempts"] == 1, done
    return meter.read()[1]


def _resend_bound(clean_tx: int, size: int) -> int:
    """The most the laptop may send for ``size`` bytes if no acknowledged byte goes twice:
    the clean cost, plus one window of unacknowledged data (and 1 MiB for background traffic
    and SCTP retransmissions), at the measured bytes-on-the-wire per payload byte."""
    per_byte = clean_tx / size
    return clean_tx + int((WINDOW + MiB) * per_byte)


@pytest.mark.slow
@pytest.mark.asyncio
async def test_link_cut_for_3s_mid_transfer_completes_without_resending_acknowledged_bytes(
    world: World,
) -> None:
    h0, h1, _ = world.hosts
    size = 32 * MiB
    async with world.client(world.a) as a, world.client(world.b) as b:
        clean_tx = await _clean_wire_cost(world, a, size)
        doc = world.root / "cut.bin"
        digest = await asyncio.to_thread(write_random, doc, size)
        session = await a.publish("org.example.cut", "cut", items=[Item.of_path("document", "cut.bin", doc)])  # fmt: skip
        meter = WireMeter(h0).start()
        h = await a.send(session.id, world.b_id)

        async def half_acknowledged() -> int | None:
            x = await _get(a, h.id)
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
              f"laptop tx {a_tx} B, clean run {clean_tx} B, bound {_resend_bound(clean_tx, size)} B")  # fmt: skip
        assert a_tx <= _resend_bound(clean_tx, size), (a_tx, clean_tx, done)
        entry = await b.inbox_entry(h.id)
        assert await asyncio.to_thread(sha256_file, Path(entry.items[0].path)) == digest


@pytest.mark.slow
@pytest.mark.asyncio
async def test_target_killed_mid_transfer_and_restarted_completes_intact(world: World) -> None:
    h0, _, _ = world.hosts
    size = 32 * MiB
    try:
        async with world.client(world.a) as a:
            clean_tx = await _clean_wire_cost(world, a, size)
            doc = world.root / "kill.bin"
            digest = await asyncio.to_thread(write_random, doc, size)
            session = await a.publish("org.example.kill", "kill", items=[Item.of_path("document", "kill.bin", doc)])  # fmt: skip
            meter = WireMeter(h0).start()
            h = await a.send(session.id, "desk")

            async def acked() -> int | None:
                x = await _get(a, h.id)
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
                  f"clean run {clean_tx} B, bound {_resend_bound(clean_tx, size)} B")  # fmt: skip
            assert a_tx <= _resend_bound(clean_tx, size), (a_tx, clean_tx, done)
        async with world.client(world.b) as b:
            entry = await b.inbox_entry(h.id)
            assert entry.items[0].sha256 == digest
            got = await asyncio.to_thread(sha256_file, world.b.paths.inbox / h.id / "kill.bin")
            assert got == digest
            assert not (world.b.paths.partial / h.id).exists()
    finally:
        await _ensure_b_running(world)


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
                x = await _get(a, h.id)
                assert x["state"] in ("pending", "connecting", "transferring"), x
                return True if x["path"] == "direct" and x["bytes_done"] >= 4 * MiB else None

            await wait_for(moving, within=120, what="4 MiB acknowledged directly", every=0.02)
            kill_hard(world.b)  # the target stays down until the source retries

            async def retrying() -> dict[str, Any] | None:
                x = await _get(a, h.id)
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
        await _ensure_b_running(world)


@pytest.mark.asyncio
async def test_server_stopped_lan_handoff_between_paired_devices_still_works(
    world: World,
) -> None:
    world.server.stop()
    try:
        async with world.client(world.a) as a, world.client(world.b) as b:
            session = await a.publish(NOTES, "offline", items=_messages(3))
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
