"""Handoff between devices that do not see each other on the LAN: found through the server.

Two real daemons and a real server on loopback, with ``lan_discovery`` off and
no ``unicast_peers``: neither daemon has a LAN address for the other, so the
signed offer and answer can only travel through the server's WebSocket, and
the resume notice too. The data still goes over a direct WebRTC connection.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from handoffd.control.client import HandoffClient, NewItem
from tests.handoff.helpers import sha256_file, wait_state, write_random
from tests.server.helpers import cli_invite, create_account
from tests.support.processes import DaemonProcess, ServerProcess
from tests.support.waiting import wait_for


class Hidden:
    """Server + two daemons that never advertise or browse on the LAN."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.server = ServerProcess(root / "srv")
        self.a = DaemonProcess(root / "a")
        self.b = DaemonProcess(root / "b")
        self.ids: dict[str, str] = {}

    def start(self) -> None:
        self.server.start()
        create_account(self.server.data, "ana")
        for d, name in ((self.a, "laptop"), (self.b, "desk")):
            d.home.mkdir(mode=0o700)
            d.start()
            status, body = d.curl("PATCH", "/v1/settings", {"lan_discovery": False})
            assert status == 200, body
            url, _ = cli_invite(self.server.data, "ana")
            status, body = d.curl("POST", "/v1/pair", {"invite": url, "name": name})
            assert status == 200, body
            self.ids[name] = str(body["device_id"])

    def stop(self) -> None:
        for d in (self.a, self.b):
            d.kill()
        self.server.stop()


@pytest.fixture(scope="module")
def hidden() -> Iterator[Hidden]:
    root = Path(tempfile.mkdtemp(prefix="hs", dir="/tmp"))
    world = Hidden(root)
    try:
        world.start()
        yield world
    finally:
        world.stop()
        if not os.environ.get("HANDOFF_TEST_KEEP"):
            shutil.rmtree(root, ignore_errors=True)


def _client(d: DaemonProcess) -> HandoffClient:
    return HandoffClient(d.socket, timeout=30)


async def _online(c: HandoffClient, other: str) -> dict[str, Any] | None:
    status = await c.status()
    if not status.raw["server_connected"]:
        return None
    for d in await c.devices():
        if d.device_id == other and d.online:
            return {"nearby": d.nearby, "addresses": d.addresses}
    return None


@pytest.mark.asyncio
async def test_found_through_the_server_sent_direct_resumed_by_notice(hidden: Hidden) -> None:
    doc = hidden.root / "plan.bin"
    digest = write_random(doc, 2 * 1024 * 1024)
    async with _client(hidden.a) as a, _client(hidden.b) as b:
        # Presence comes from the server's WebSocket; nothing was seen on the LAN.
        seen = await wait_for(lambda: _online(a, hidden.ids["desk"]), within=60, what="presence")
        assert seen == {"nearby": False, "addresses": ()}
        await wait_for(lambda: _online(b, hidden.ids["laptop"]), within=60, what="presence")

        session = await a.publish(
            "org.example.hidden",
            "Away from the LAN",
            context={"step": 3},
            items=[
                NewItem.of_text("message", "m1.txt", "through the server"),
                NewItem.of_path("document", "plan.bin", doc),
            ],
        )
        h = await a.send(session.id, "desk")
        done = await wait_state(a, h.id, {"delivered", "resumed", "failed", "declined"})
        assert done["state"] == "delivered", done
        assert done["path"] == "direct"
        assert done["attempts"] == 1
        entry = await b.inbox_entry(h.id)
        by_name = {i.name: i for i in entry.items}
        assert sha256_file(Path(by_name["plan.bin"].path)) == digest
        assert entry.context == {"step": 3}
        # Still the source's until the target resumes it.
        assert (await a.session(session.id)).state == "active"

    # Restart the source: no link to it is left, so the notice must go through the server.
    hidden.a.kill()
    hidden.a.start()
    async with _client(hidden.a) as a, _client(hidden.b) as b:
        await wait_for(lambda: _online(b, hidden.ids["laptop"]), within=60, what="presence")
        confirmed = await b.confirm_resumed(h.id)
        assert confirmed.state == "resumed"
        final = await wait_state(a, h.id, {"resumed"}, within=60)
        assert final["state"] == "resumed"
        assert (await a.session(session.id)).state == "handed-off"
