"""Which path a handoff takes, in the network lab: direct when UDP gets through, the relay when it
does not, and back to direct mid-transfer once it does again.

Layout: h0 198.18.0.1 runs ``handoff-server`` (relay included); "laptop" (``a``) on h1
198.18.0.2 and "desk" (``b``) on h2 198.18.0.3. Blocking UDP between h1 and h2 only leaves
mDNS (multicast) and both devices' TCP to the server untouched: the devices still see each
other, the signed offer still reaches the desk, but no ICE check can succeed, so only the relay
can carry the session.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from handoffd.control.client import HandoffClient, Item
from handoffd.handoff.link import WINDOW
from tests.handoff.helpers import sha256_file, wait_nearby, wait_state, write_random
from tests.handoff.labkit import (
    LabDaemon,
    LabServer,
    MiB,
    pair_daemon,
)
from tests.lab import Host, Lab
from tests.lab.fixtures import require_lab
from tests.server.helpers import create_account
from tests.support.waiting import wait_for

pytestmark = pytest.mark.lab

UPGRADE_ENV = {
    "HANDOFF_UPGRADE_FIRST": "2",
    "HANDOFF_UPGRADE_EVERY": "2",
    "HANDOFF_WARM_IDLE": "0",
    "HANDOFF_LANE_MIN_BYTES": "-1",  # relay -> direct here; the lane: test_lab_lane.py
}
"""Try the direct path every 2 s while relayed (default 5 s, then every 15 s and more); no warm
links, so each handoff chooses its path afresh."""


@dataclass
class World:
    lab: Lab
    root: Path
    server: LabServer
    a: LabDaemon
    b: LabDaemon
    a_id: str
    b_id: str

    @property
    def hosts(self) -> tuple[Host, Host, Host]:
        h0, h1, h2 = self.lab.hosts
        return h0, h1, h2

    def client(self, d: LabDaemon) -> HandoffClient:
        return HandoffClient(d.socket, timeout=30)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    require_lab()
    lab = Lab.create(3)
    root = Path(tempfile.mkdtemp(prefix="hp", dir="/tmp"))
    try:
        h0, h1, h2 = lab.hosts
        server = LabServer(root / "srv", host=h0).start()
        create_account(server.data, "lab")
        a = LabDaemon(root / "a", env=dict(UPGRADE_ENV), host=h1)
        b = LabDaemon(root / "b", env=dict(UPGRADE_ENV), host=h2)
        for d in (a, b):
            d.home.mkdir(mode=0o700)
            d.start()
        a_id = pair_daemon(server, a, "lab", "laptop")
        b_id = pair_daemon(server, b, "lab", "desk")
        wait_nearby(a, b_id)
        wait_nearby(b, a_id)
        yield World(lab, root, server, a, b, a_id, b_id)
    finally:
        lab.close()
        if not os.environ.get("HANDOFF_TEST_KEEP"):
            shutil.rmtree(root, ignore_errors=True)


async def _get(client: HandoffClient, handoff_id: str) -> dict[str, Any]:
    h: dict[str, Any] = await client.request("GET", f"/v1/handoffs/{handoff_id}")
    return h


async def _publish(c: HandoffClient, world: World, name: str, size: int) -> tuple[str, str]:
    doc = world.root / name
    digest = await asyncio.to_thread(write_random, doc, size)
    session = await c.publish(
        "org.example.paths", name, items=[Item.of_path("document", name, doc)]
    )
    return session.id, digest


async def _check_inbox(c: HandoffClient, handoff_id: str, digest: str) -> None:
    entry = await c.inbox_entry(handoff_id)
    (item,) = entry.items
    assert await asyncio.to_thread(sha256_file, Path(item.path)) == digest


@pytest.mark.asyncio
async def test_direct_when_udp_gets_through(world: World) -> None:
    async with world.client(world.a) as a, world.client(world.b) as b:
        sid, digest = await _publish(a, world, "direct.bin", 2 * MiB)
        h = await a.send(sid, "desk")
        done = await wait_state(a, h.id, {"delivered", "failed", "declined"}, 120)
        assert done["state"] == "delivered", done
        assert done["path"] == "direct"
        await _check_inbox(b, h.id, digest)
        assert (await b.handoff(h.id)).path == "direct"


@pytest.mark.asyncio
async def test_relay_when_udp_is_blocked_then_direct_mid_transfer(world: World) -> None:
    _, h1, h2 = world.hosts
    size = 48 * MiB
    async with world.client(world.a) as a, world.client(world.b) as b:
        sid, digest = await _publish(a, world, "relayed.bin", size)
        # Slow enough that the transfer is still running when UDP comes back.
        with h1.rate_limit("40mbit", direction="out"):
            blocked = world.lab.block_udp(h2, h1)
            try:
                h = await a.send(sid, "desk")

                async def relayed() -> dict[str, Any] | None:
                    x = await _get(a, h.id)
                    if x["state"] in ("failed", "declined"):
                        raise AssertionError(x)
                    return x if x["path"] == "relay" and x["bytes_done"] > 4 * MiB else None

                first = await wait_for(relayed, within=90, what="bytes through the relay")
                assert first["attempts"] == 1
                # The desk sees the same path for its side.
                assert (await b.handoff(h.id)).path == "relay"
            finally:
                blocked.undo()

            async def direct_again() -> dict[str, Any] | None:
                x = await _get(a, h.id)
                return x if x["path"] == "direct" or x["state"] != "transferring" else None

            moved = await wait_for(direct_again, within=90, what="the move to the direct path")
        done = await wait_state(a, h.id, {"delivered", "failed", "declined"}, 240)
        assert done["state"] == "delivered", done
        assert moved["path"] == "direct", moved  # it moved before the end
        assert done["path"] == "direct"
        assert done["attempts"] == 1  # a move is not a failed attempt
        await _check_inbox(b, h.id, digest)
        # The direct exchange sent what the relay had not delivered, plus at most the window
        # that was in flight unacknowledged: never the whole document again.
        resent_bound = size - first["bytes_done"] + 2 * WINDOW
        assert 0 < done["wire"]["data_bytes_sent"] <= resent_bound, (done, first)
    log = world.a.log.read_text()
    assert 'event="transfer moves to a better path" path=direct' in log
