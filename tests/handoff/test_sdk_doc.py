"""docs/sdk.md's complete example, run as written against two real paired daemons, and the
SDK's waiting helpers and connected apps (``events(app_id=...)``)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from handoffd.control import Handoff, InboxEntry, InboxItem, Item, Peer
from tests.handoff.helpers import Pair, paired_daemons

DOC = Path(__file__).resolve().parents[2] / "docs" / "sdk.md"
APP = "org.example.sdkwait"


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    """Server + laptop (a) + desk (b), paired and nearby; shared by this module's tests."""
    with paired_daemons() as p:
        yield p


def _doc_blocks() -> tuple[str, str]:
    """The example (the python block after the marker) and the output shown after it."""
    text = DOC.read_text()
    after = text.split("<!-- sdk-example -->", 1)[1]
    blocks = re.findall(r"```(\w*)\n(.*?)```", after, flags=re.S)
    assert blocks[0][0] == "python"
    return blocks[0][1], blocks[1][1]


def test_the_documented_example_runs(pair: Pair, tmp_path: Path) -> None:
    code, shown = _doc_blocks()
    script = tmp_path / "sdk_example.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, str(script), str(pair.a.home), str(pair.b.home), "desk"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == shown


@pytest.mark.asyncio
async def test_waits_and_a_connected_app(pair: Pair) -> None:
    async with pair.client(pair.a) as a, pair.client(pair.b) as b:
        listening = b.events(heartbeats=True, app_id=APP)
        assert (await anext(listening))["type"] == "heartbeat"  # b's app is connected now
        session = await a.publish(APP, "w", items=[Item.of_text("message", "m.txt", "hi")])
        since = time.time()
        sent = await a.send(session.id, "desk")
        async with asyncio.timeout(120):
            delivered = await a.wait_handoff(sent.id)
            entry = await b.next_received(app_id=APP, since=since)
            # Already delivered: read after subscribing, so it returns at once.
            again = await a.wait_handoff(sent.id, states=["delivered"])
        assert isinstance(delivered, Handoff)
        assert isinstance(delivered.peer, Peer)
        assert (delivered.state, again.state) == ("delivered", "delivered")
        assert isinstance(entry, InboxEntry)
        assert isinstance(entry.items[0], InboxItem)
        assert dataclasses.asdict(entry.items[0]) == entry.items[0].raw  # as the CLI prints it
        assert entry.items[0].raw["name"] == "m.txt"
        assert (entry.id, entry.app_id, entry.sender.name) == (sent.id, APP, "laptop")
        event = None
        async with asyncio.timeout(60):
            async for event in listening:
                if event.get("type") == "handoff.received" and event["handoff_id"] == sent.id:
                    break
        assert event is not None
        assert event["app_id"] == APP
        await listening.aclose()
        log = await asyncio.to_thread(pair.b.log.read_text)
        assert f'event="app connected; not launching" app="{APP}"' in log
        await b.confirm_resumed(entry.id)
        async with asyncio.timeout(120):
            resumed = await a.wait_handoff(sent.id, states=["resumed"])
        assert resumed.state == "resumed"
