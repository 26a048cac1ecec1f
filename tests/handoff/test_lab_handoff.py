"""LAN handoff in the network lab: two hosts, real daemon processes, real multicast, real aiortc.

The server and "laptop" run in host h0, "desk" in host h1; the daemons find
each other by mDNS on the lab bridge and connect directly.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from handoffd.control.client import HandoffClient, Item
from tests.handoff.helpers import (
    checkpoints,
    register_notes_app,
    sha256_file,
    wait_nearby,
    wait_state,
    write_random,
)
from tests.handoff.labkit import LabDaemon, LabServer
from tests.lab import Lab
from tests.lab.fixtures import require_lab
from tests.server.helpers import cli_invite, create_account
from tests.support.processes import DaemonProcess, ServerProcess
from tests.support.waiting import wait_for

pytestmark = pytest.mark.lab
NOTES = "org.handoffd.notes"
MiB = 1024 * 1024


@dataclass
class World:
    lab: Lab
    root: Path
    server: ServerProcess
    a: LabDaemon
    b: LabDaemon
    a_id: str
    b_id: str

    def client(self, d: DaemonProcess) -> HandoffClient:
        return HandoffClient(d.socket, timeout=30)


def _pair(server: ServerProcess, d: DaemonProcess, name: str) -> str:
    url, _ = cli_invite(server.data, "lab")
    status, body = d.curl("POST", "/v1/pair", {"invite": url, "name": name})
    assert status == 200, body
    return str(body["device_id"])


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    require_lab()
    lab = Lab.create(2)
    root = Path(tempfile.mkdtemp(prefix="hl", dir="/tmp"))
    try:
        h0, h1 = lab.hosts
        server = LabServer(root / "srv", host=h0, port=0).start()
        create_account(server.data, "lab")
        # The data channel end to end (the LAN lane: test_lab_lane.py).
        lane_off = {"HANDOFF_LANE_MIN_BYTES": "-1"}
        a = LabDaemon(root / "a", env=dict(lane_off), host=h0)
        b = LabDaemon(root / "b", env=dict(lane_off), host=h1)
        for d in (a, b):
            d.home.mkdir(mode=0o700)
            d.start()
        a_id, b_id = _pair(server, a, "laptop"), _pair(server, b, "desk")
        wait_nearby(a, b_id)  # found over real multicast on the lab bridge
        wait_nearby(b, a_id)
        register_notes_app(b)
        yield World(lab, root, server, a, b, a_id, b_id)
    finally:
        lab.close()
        shutil.rmtree(root, ignore_errors=True)


def _messages(n: int) -> list[Item]:
    return [Item.of_text("message", f"msg-{i:03d}.txt", f"message {i}") for i in range(n)]


@pytest.mark.slow
@pytest.mark.asyncio
async def test_lab_session_with_documents_arrives_intact_and_resumes(world: World) -> None:
    docs = world.root / "docs"
    docs.mkdir()
    sums = {}
    for name, size in (("one-k.bin", 1024), ("one-m.bin", MiB), ("fifty-m.bin", 50 * MiB)):
        sums[name] = await asyncio.to_thread(write_random, docs / name, size)
    async with world.client(world.a) as a, world.client(world.b) as b:
        session = await a.publish(
            NOTES, "Lab trip", context={"cursor": 3},
            items=[*_messages(100), *(Item.of_path("document", n, docs / n) for n in sums)],
        )  # fmt: skip
        h = await a.send(session.id, "desk")
        done = await wait_state(a, h.id, {"resumed", "failed", "declined"}, within=240)
        assert done["state"] == "resumed", done
        assert done["path"] == "direct"
        assert (await a.session(session.id)).state == "handed-off"
        entry = await b.inbox_entry(h.id)
        assert entry.state == "resumed"  # the launched notes app confirmed
        assert len(entry.items) == 103
        for item in entry.items:
            got = await asyncio.to_thread(sha256_file, Path(item.path))
            assert got == item.sha256
            if item.type == "document":
                assert got == sums[item.name]


@pytest.mark.slow
@pytest.mark.asyncio
async def test_lab_link_cut_for_3s_completes_without_resending(world: World) -> None:
    doc = world.root / "cut.bin"
    size = 24 * MiB
    digest = await asyncio.to_thread(write_random, doc, size)
    h1 = world.lab.hosts[1]
    async with world.client(world.a) as a, world.client(world.b) as b:
        session = await a.publish(
            "org.example.cut", "cut", items=[Item.of_path("document", "cut.bin", doc)]
        )
        h = await a.send(session.id, world.b_id)

        async def moving() -> bool | None:
            cur = await a.request("GET", f"/v1/handoffs/{h.id}")
            return True if cur["bytes_done"] > 3 * MiB else None

        await wait_for(moving, within=120, what="3 MiB acknowledged")
        with h1.fault("link_down"):
            held_at_cut = sum(checkpoints(world.b, h.id).values())
            await asyncio.sleep(3)
        done = await wait_state(a, h.id, {"delivered", "resumed", "failed"}, within=300)
        assert done["state"] in {"delivered", "resumed"}, done
        wire = done["wire"]
        # The last attempt sent only what the target did not already hold durably.
        assert wire["bytes_already_held"] + wire["data_bytes_sent"] == size
        if done["attempts"] == 1:
            # The data channel rode out the cut (SCTP retransmits): every byte went once.
            assert wire["data_bytes_sent"] == size
        else:
            # A new connection resumed from at least what the target held durably at the cut.
            assert wire["bytes_already_held"] >= held_at_cut
        entry = await b.inbox_entry(h.id)
        assert await asyncio.to_thread(sha256_file, Path(entry.items[0].path)) == digest


@pytest.mark.asyncio
async def test_lab_server_stopped_lan_handoff_still_works(world: World) -> None:
    world.server.stop()
    async with world.client(world.a) as a:
        session = await a.publish(NOTES, "offline", items=_messages(3))
        h = await a.send(session.id, "desk")
        started = time.monotonic()
        done = await wait_state(a, h.id, {"resumed", "failed", "declined"}, within=120)
        assert done["state"] == "resumed", (done, time.monotonic() - started)
        assert done["path"] == "direct"
