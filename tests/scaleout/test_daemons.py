"""Real daemons on two instances: a handoff found and signaled through the server path.

Daemon A is paired with (and connects to) instance A, daemon B with instance B,
LAN discovery off: presence and the signed offer/answer can only travel between
them through the bus between the instances. The data goes direct (WebRTC).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from handoffd.control.client import HandoffClient, Item
from tests.daemon.helpers import DaemonProcess
from tests.handoff.helpers import sha256_file, wait_for, wait_state, write_random
from tests.handoff.test_server_path import _online
from tests.scaleout.conftest import Cluster
from tests.scaleout.test_cluster import _account
from tests.server.helpers import cli_invite


@pytest.fixture(scope="module")
def daemons(cluster: Cluster) -> Iterator[tuple[DaemonProcess, DaemonProcess, dict[str, str]]]:
    root = Path(tempfile.mkdtemp(prefix="hs", dir="/tmp"))
    pair = (DaemonProcess(root / "a"), DaemonProcess(root / "b"))
    ids: dict[str, str] = {}
    try:
        _account(cluster, "ivy")
        for index, (d, name) in enumerate(zip(pair, ("laptop", "desk"), strict=True)):
            d.home.mkdir(mode=0o700)
            d.start()
            status, body = d.curl("PATCH", "/v1/settings", {"lan_discovery": False})
            assert status == 200, body
            url, _ = cli_invite(
                cluster.instances[0].data,
                "ivy",
                "--server-url",
                cluster.instances[index].url,  # this daemon's instance, directly
            )
            status, body = d.curl("POST", "/v1/pair", {"invite": url, "name": name})
            assert status == 200, body
            ids[name] = str(body["device_id"])
        yield pair[0], pair[1], ids
    finally:
        for d in pair:
            d.kill()
        if not os.environ.get("HANDOFF_TEST_KEEP"):
            shutil.rmtree(root, ignore_errors=True)


@pytest.mark.asyncio
async def test_handoff_between_daemons_on_two_instances(
    cluster: Cluster, daemons: tuple[DaemonProcess, DaemonProcess, dict[str, str]], tmp_path: Path
) -> None:
    da, db, ids = daemons
    doc = tmp_path / "plan.bin"
    digest = write_random(doc, 1024 * 1024)
    async with HandoffClient(da.socket, timeout=30) as a, HandoffClient(db.socket, timeout=30) as b:
        seen = await wait_for(lambda: _online(a, ids["desk"]), within=60, what="presence")
        assert seen == {"nearby": False, "addresses": ()}
        await wait_for(lambda: _online(b, ids["laptop"]), within=60, what="presence")
        session = await a.publish(
            "org.example.scaleout",
            "Across two instances",
            context={"step": 7},
            items=[
                Item.of_text("message", "m1.txt", "through two instances"),
                Item.of_path("document", "plan.bin", doc),
            ],
        )
        h = await a.send(session.id, "desk")
        done = await wait_state(a, h.id, {"delivered", "resumed", "failed", "declined"})
        assert done["state"] == "delivered", done
        entry = await b.inbox_entry(h.id)
        by_name = {i.name: i for i in entry.items}
        assert sha256_file(Path(by_name["plan.bin"].path)) == digest
        assert entry.context == {"step": 7}
    # Each daemon's socket was held by its own instance, and only there.
    online = [
        set(re.findall(r'event="device online" account=\S+ device=(\S+)', p.log.read_text()))
        for p in cluster.instances[:2]
    ]
    assert ids["laptop"] in online[0] - online[1]
    assert ids["desk"] in online[1] - online[0]
