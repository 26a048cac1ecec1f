"""The LAN lane in the network lab: real daemons, real TCP, real TLS, real faults.

- h0 198.18.0.1: ``handoff-server``; the rogue processes (another account's device, a revoked
  device, a plain TCP client, a same-account device replaying a spent token) run here too;
- h1 198.18.0.2: "laptop", the sender;
- h2 198.18.0.3: "desk", the target, its lane on a fixed port (so a test can block it).

The data channel comes up first; the desk offers its lane after accepting; the laptop moves
the transfer there at a chunk boundary. A tap on the desk's link proves the lane is
encrypted; nft rules block or reset the lane's port; the desk's ``refused`` list names every
connection it turned away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from handoffd.control.client import HandoffClient, Item
from tests.handoff.helpers import checkpoints, sha256_file, wait_nearby, wait_state, write_random
from tests.handoff.labkit import LabDaemon, LabServer, WireMeter, pair_daemon, stop_quietly
from tests.lab import Host, Lab
from tests.lab.fixtures import require_lab
from tests.server.helpers import create_account
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]
MiB = 1024 * 1024
LANE_PORT = 7722
SIGNALING_PORT = 7711
WINDOW = 4 * MiB


@dataclass
class World:
    lab: Lab
    root: Path
    server: LabServer
    a: LabDaemon
    b: LabDaemon
    a_id: str
    b_id: str
    stranger: Path
    """The home of a device of another account (its daemon stopped)."""
    lost: Path
    """The home of a device of the account that the desk revoked (its daemon stopped)."""

    def client(self, d: LabDaemon) -> HandoffClient:
        return HandoffClient(d.socket, timeout=30)

    def host(self, d: LabDaemon) -> Host:
        assert d.host is not None
        return d.host


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    """One lab for the module; closed (processes stopped by PID, namespaces gone) whatever happens."""
    require_lab()
    lab = Lab.create(3)
    root = Path(tempfile.mkdtemp(prefix="hn", dir="/tmp"))
    try:
        h0, h1, h2 = lab.hosts
        server = LabServer(root / "srv", host=h0).start()
        create_account(server.data, "lab")
        create_account(server.data, "other")
        # Every test starts cold: a lingering warm link of the previous one is not reused.
        a = LabDaemon(root / "a", host=h1, env={"HANDOFF_WARM_IDLE": "0"})
        b = LabDaemon(
            root / "b",
            host=h2,
            env={
                "HANDOFF_LANE_PORT": str(LANE_PORT),
                "HANDOFF_SIGNALING_PORT": str(SIGNALING_PORT),
            },
        )
        lost = LabDaemon(root / "l", host=h0)
        stranger = LabDaemon(root / "s", host=h0)
        for d in (a, b, lost, stranger):
            d.home.mkdir(mode=0o700)
            d.start()
        a_id = pair_daemon(server, a, "lab", "laptop")
        b_id = pair_daemon(server, b, "lab", "desk")
        lost_id = pair_daemon(server, lost, "lab", "lost")
        pair_daemon(server, stranger, "other", "stranger")
        for d in (lost, stranger):
            stop_quietly(d)
        status, body = b.curl("DELETE", f"/v1/devices/{lost_id}")
        assert status == 200, body
        wait_nearby(a, b_id)
        wait_nearby(b, a_id)
        yield World(lab, root, server, a, b, a_id, b_id, stranger.home, lost.home)
    finally:
        lab.close()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def tapping(host: Host, out: Path) -> Iterator[Path]:
    """A tap of ``host``'s link (tests/handoff/linktap.py) while the block runs."""
    proc = host.popen(
        [sys.executable, "-m", "tests.handoff.linktap", "--iface", "eth0", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        yield out
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def refused(d: LabDaemon) -> dict[str, int]:
    """The daemon's refusals of the lane path: count by code."""
    status, body = d.curl("GET", "/v1/status")
    assert status == 200, body
    return {e["code"]: e["count"] for e in body.get("refused", []) if e["path"] == "lane"}


async def collect_events(client: HandoffClient, into: list[dict[str, Any]]) -> None:
    async for event in client.events():
        into.append(event)  # noqa: PERF401 - seen as they come, the task is cancelled


@pytest.mark.slow
@pytest.mark.asyncio
async def test_lab_fifty_mib_over_the_lane_intact_encrypted_and_visible(world: World) -> None:
    marker = b"LANE-MARKER-7f3a9c-" * 4
    doc = world.root / "fifty.bin"
    await asyncio.to_thread(write_random, doc, 50 * MiB)
    with doc.open("r+b") as f:  # the marker, many times over, inside the document
        for at in range(0, 50 * MiB, 4 * MiB):
            f.seek(at + 12345)
            f.write(marker)
    digest = await asyncio.to_thread(sha256_file, doc)
    before = refused(world.b)
    seen: list[dict[str, Any]] = []
    with tapping(world.host(world.b), world.root / "tap-fifty.bin") as tap:
        async with world.client(world.a) as a, world.client(world.b) as b:
            session = await a.publish(
                "org.example.lane", "fifty", items=[Item.of_path("document", "fifty.bin", doc)]
            )
            listener = asyncio.create_task(collect_events(a, seen))
            try:
                h = await a.send(session.id, world.b_id)
                done = await wait_state(a, h.id, {"delivered", "resumed", "failed"}, within=300)
            finally:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await listener
            assert done["state"] in {"delivered", "resumed"}, done
            assert done["path"] == "lane"
            assert done["attempts"] == 1  # moving onto the lane is not a failed attempt
            incoming = await b.request("GET", f"/v1/handoffs/{h.id}")
            assert incoming["path"] == "lane"
            entry = await b.inbox_entry(h.id)
            assert await asyncio.to_thread(sha256_file, Path(entry.items[0].path)) == digest
            wire = done["wire"]
            assert wire["bytes_already_held"] + wire["data_bytes_sent"] == 50 * MiB
            # The events said so too: the move onto the lane, and the final state with its path.
            mine = [e for e in seen if e.get("handoff_id") == h.id]
            paths = [e["path"] for e in mine if e["type"] == "handoff.path"]
            assert paths[-1] == "lane", paths
            assert any(e["type"] == "handoff.state" and e.get("path") == "lane" for e in mine)
    captured = tap.read_bytes()
    assert len(captured) > 50 * MiB  # the tap saw the transfer go by
    assert marker[:19] not in captured
    assert refused(world.b) == before
    log = world.a.log_text()
    assert "the lane is ready" in log
    # The CLI shows the path.
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "handoffd.cli", "--home", str(world.a.home), "handoffs"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert any(h.id[:8] in line and "lane" in line for line in out.stdout.splitlines()), out.stdout


@pytest.mark.asyncio
async def test_lab_lane_port_blocked_completes_over_the_data_channel(world: World) -> None:
    doc = world.root / "blocked.bin"
    digest = await asyncio.to_thread(write_random, doc, 20 * MiB)
    host_b = world.host(world.b)
    rule = world.lab._rule_fault(
        "block_lane", host_b, [("input", f'iifname "eth0" tcp dport {LANE_PORT} drop')]
    )
    with rule:
        async with world.client(world.a) as a, world.client(world.b) as b:
            session = await a.publish(
                "org.example.lane", "blocked", items=[Item.of_path("document", doc.name, doc)]
            )
            h = await a.send(session.id, world.b_id)
            done = await wait_state(a, h.id, {"delivered", "resumed", "failed"}, within=300)
            assert done["state"] in {"delivered", "resumed"}, done
            assert done["path"] == "direct"
            assert done["attempts"] == 1
            entry = await b.inbox_entry(h.id)
            assert await asyncio.to_thread(sha256_file, Path(entry.items[0].path)) == digest


@pytest.mark.slow
@pytest.mark.asyncio
async def test_lab_lane_reset_mid_transfer_completes_without_resending(world: World) -> None:
    size = 120 * MiB
    doc = world.root / "reset.bin"
    digest = await asyncio.to_thread(write_random, doc, size)
    host_a, host_b = world.host(world.a), world.host(world.b)
    meter = WireMeter(host_a).start()
    with world.lab.rate_limit(host_a, "200mbit"):
        async with world.client(world.a) as a, world.client(world.b) as b:
            session = await a.publish(
                "org.example.lane", "reset", items=[Item.of_path("document", doc.name, doc)]
            )
            h = await a.send(session.id, world.b_id)

            async def on_lane_and_moving() -> bool | None:
                cur = await a.request("GET", f"/v1/handoffs/{h.id}")
                return True if cur["path"] == "lane" and cur["bytes_done"] > 30 * MiB else None

            await wait_for(on_lane_and_moving, within=300, what="30 MiB acknowledged on the lane")
            # The desk's lane port answers every segment with a reset from now on.
            rule = world.lab._rule_fault(
                "reset_lane",
                host_b,
                [("input", f'iifname "eth0" tcp dport {LANE_PORT} reject with tcp reset')],
            )
            with rule:
                held_at_cut = sum(checkpoints(world.b, h.id).values())
                done = await wait_state(a, h.id, {"delivered", "resumed", "failed"}, within=600)
            assert done["state"] in {"delivered", "resumed"}, done
            assert done["path"] in {"direct", "relay"}
            wire = done["wire"]
            # The last attempt sent only what the desk did not hold durably ...
            assert wire["bytes_already_held"] + wire["data_bytes_sent"] == size
            assert wire["bytes_already_held"] >= held_at_cut
            entry = await b.inbox_entry(h.id)
            assert await asyncio.to_thread(sha256_file, Path(entry.items[0].path)) == digest
    # ... and on the wire: the document once, plus at most a window in flight per path change
    # (data channel -> lane, lane -> data channel) and framing/encryption overhead.
    _, tx = meter.read()
    assert tx < size * 1.08 + 3 * WINDOW, (tx, size)


def rogue(world: World, case: str, home: Path | None = None) -> dict[str, str]:
    h0 = world.lab.hosts[0]
    argv = [
        sys.executable, "-m", "tests.handoff.lanerogue", case,
        "--to", world.b_id, "--at", f"{world.host(world.b).address}:{LANE_PORT}",
        "--trust", str(world.b.home),
        "--signal", f"{world.host(world.b).address}:{SIGNALING_PORT}",
    ]  # fmt: skip
    if home is not None:
        argv += ["--home", str(home)]
    done = h0.run(argv, timeout=120)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.asyncio
async def test_lab_lane_refuses_strangers_revoked_plain_tcp_and_spent_tokens(
    world: World,
) -> None:
    before = refused(world.b)

    def grew(code: str) -> bool:
        return refused(world.b).get(code, 0) > before.get(code, 0)

    got = await asyncio.to_thread(rogue, world, "tls", world.stranger)
    assert got["result"] != "connected", got
    await wait_for(lambda: True if grew("tls-cert-untrusted") else None, within=30, what="stranger")

    got = await asyncio.to_thread(rogue, world, "tls", world.lost)
    assert got["result"] == "cert-revoked", got
    await wait_for(lambda: True if grew("cert-revoked") else None, within=30, what="revoked")

    got = await asyncio.to_thread(rogue, world, "plain")
    assert got["result"] == "closed-silent", got
    await wait_for(
        lambda: True if grew("lane-handshake-timeout") else None, within=30, what="plain TCP"
    )

    # A device of the account (the laptop's identity) that got a genuine token from the desk
    # in a real exchange: the first lane connection is admitted, the token's replay is not.
    got = await asyncio.to_thread(rogue, world, "reuse", world.a.home)
    assert got["first"] == "connected", got
    assert got["result"] == "lane-token-reused", got
    await wait_for(lambda: True if grew("lane-token-reused") else None, within=30, what="reuse")


@pytest.mark.asyncio
async def test_lab_small_session_stays_on_the_data_channel(world: World) -> None:
    offered = world.b.log_text().count("lane offered")
    async with world.client(world.a) as a:
        items = [Item.of_text("message", f"m{i}.txt", f"message {i}") for i in range(5)]
        session = await a.publish("org.example.lane", "small", items=items)
        h = await a.send(session.id, world.b_id)
        done = await wait_state(a, h.id, {"delivered", "resumed", "failed"}, within=120)
        assert done["state"] in {"delivered", "resumed"}, done
        assert done["path"] == "direct"  # below lane_min_bytes: no lane offered, nothing moves
    assert world.b.log_text().count("lane offered") == offered
