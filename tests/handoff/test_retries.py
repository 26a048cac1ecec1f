"""Retries of an outgoing handoff: visible, bounded, cancellable; the session stays on the source.

A real server and two real daemons on loopback; the target is stopped, so every attempt fails
(its old address refuses the connection; the server does not list it online, so no relay).
Short backoff through the environment: 3 attempts, 0.5 s doubling.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from handoffd.control.client import HandoffClient, Item
from tests.daemon.helpers import DaemonProcess
from tests.handoff.helpers import wait_for, wait_nearby, wait_state
from tests.server.helpers import ServerProcess, cli_invite, create_account

RETRY_ENV = {"HANDOFF_MAX_ATTEMPTS": "3", "HANDOFF_BACKOFF_BASE": "1.5", "HANDOFF_WARM_IDLE": "0"}


class World:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.server = ServerProcess(root / "srv")
        self.a = DaemonProcess(root / "a", env=dict(RETRY_ENV))
        self.b = DaemonProcess(root / "b")
        self.b_id = ""

    def start(self) -> None:
        self.server.start()
        create_account(self.server.data, "ana")
        ids = {}
        for d, name in ((self.a, "laptop"), (self.b, "desk")):
            d.home.mkdir(mode=0o700)
            d.start()
            url, _ = cli_invite(self.server.data, "ana")
            status, body = d.curl("POST", "/v1/pair", {"invite": url, "name": name})
            assert status == 200, body
            ids[name] = str(body["device_id"])
        self.b_id = ids["desk"]
        wait_nearby(self.a, self.b_id)


@pytest.fixture
def world() -> Iterator[World]:
    root = Path(tempfile.mkdtemp(prefix="hr", dir="/tmp"))
    w = World(root)
    try:
        w.start()
        yield w
    finally:
        for d in (w.a, w.b):
            d.kill()
        w.server.stop()
        if not os.environ.get("HANDOFF_TEST_KEEP"):
            shutil.rmtree(root, ignore_errors=True)


async def _get(c: HandoffClient, handoff_id: str) -> dict[str, Any]:
    h: dict[str, Any] = await c.request("GET", f"/v1/handoffs/{handoff_id}")
    return h


@pytest.mark.timeout(300)  # three attempts with backoff, then a second handoff: its waits add up
@pytest.mark.asyncio
async def test_retries_are_visible_bounded_and_cancellable(world: World) -> None:
    world.b.kill()  # gone without a goodbye: its LAN address is still remembered for a while
    async with HandoffClient(world.a.socket, timeout=30) as a:
        session = await a.publish(
            "org.example.retry", "retry me", items=[Item.of_text("message", "m", "hello")]
        )
        h = await a.send(session.id, world.b_id)

        async def retrying() -> dict[str, Any] | None:
            x = await _get(a, h.id)
            return x if x["state"] == "retrying" else None

        seen = await wait_for(retrying, within=60, what="retrying")
        now = time.time()
        assert seen["attempts"] >= 1
        assert seen["next_retry_at"] is not None
        assert now - 1 < seen["next_retry_at"] < now + 1.5 * 2 ** (seen["attempts"] - 1) + 1
        assert seen["error"]["code"], seen
        assert (await a.session(session.id)).state == "active"

        failed = await wait_state(a, h.id, {"failed", "delivered", "resumed"}, within=90)
        assert failed["state"] == "failed", failed
        assert failed["attempts"] == 3
        assert failed["next_retry_at"] is None
        assert failed["error"]["code"] in {
            "peer-not-found",
            "signaling-unreachable",
            "connect-timeout",
            "no-path",
        }, failed
        assert (await a.session(session.id)).state == "active"

        # Cancel while it waits for its next try. By now the target may be known to be gone
        # (liveness): then the handoff waits for the device instead of retrying.
        h2 = await a.send(session.id, world.b_id)
        await wait_for(lambda: _waiting(a, h2.id), within=60, what="second retrying or waiting")
        cancelled = await a.cancel(h2.id)
        assert cancelled.state == "cancelled"
        assert (await _get(a, h2.id))["next_retry_at"] is None
        assert (await a.session(session.id)).state == "active"

        # The target back: a new handoff of the same session goes through.
        world.b.start()
        h3 = await a.send(session.id, world.b_id)
        done = await wait_state(a, h3.id, {"delivered", "failed"}, within=90)
        assert done["state"] == "delivered", done
        # The cancelled one stayed cancelled, the failed one failed.
        assert (await _get(a, h2.id))["state"] == "cancelled"
        assert (await _get(a, h.id))["state"] == "failed"


async def _waiting(a: HandoffClient, handoff_id: str) -> dict[str, Any] | None:
    x = await _get(a, handoff_id)
    return x if x["state"] in ("retrying", "waiting-for-device") else None
