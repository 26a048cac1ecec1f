"""LAN handoff end to end: two real daemons, real aiortc, real mDNS, a real server (until stopped)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from handoffd.control.client import Item
from handoffd.errors import ApiError
from tests.handoff.helpers import (
    Pair,
    paired_daemons,
    register_notes_app,
    sha256_file,
    wait_state,
    write_random,
)
from tests.support.processes import CURL
from tests.support.waiting import wait_for

NOTES = "org.handoffd.notes"
MESSAGES = 61  # + 2 documents = 63 items (the control API takes at most 1,024)


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    """Server + laptop (a) + desk (b), paired and nearby; shared by this module's tests.

    The desk offers no LAN lane: these tests follow transfers on the data channel (one is
    cancelled mid-way; the lane would deliver it first). The lane: test_lab_lane.py."""
    with paired_daemons(env_b={"HANDOFF_LANE_MIN_BYTES": "-1"}) as p:
        yield p


def _messages(n: int) -> list[Item]:
    return [Item.of_text("message", f"msg-{i:03d}.txt", f"message {i}") for i in range(n)]


@pytest.mark.asyncio
async def test_session_arrives_intact_and_the_launched_app_resumes_it(pair: Pair) -> None:
    docs = pair.root / "docs"
    docs.mkdir(exist_ok=True)
    small, big = docs / "small.bin", docs / "big.bin"
    sums = {"small.bin": write_random(small, 1024), "big.bin": write_random(big, 1024 * 1024)}
    register_notes_app(pair.b)
    async with pair.client(pair.a) as a, pair.client(pair.b) as b:
        session = await a.publish(
            NOTES,
            "Trip plans",
            context={"draft": "book the train", "cursor": 7},
            items=[
                *_messages(MESSAGES),
                Item.of_path("document", "small.bin", small),
                Item.of_path("document", "big.bin", big),
            ],
        )
        started = await a.send(session.id, "desk")
        assert started.state in {"pending", "connecting"}
        assert started.direction == "out"
        assert started.peer.device_id == pair.b_id

        done = await wait_state(a, started.id, {"resumed", "failed", "declined", "cancelled"})
        assert done["state"] == "resumed", done
        assert done["path"] == "direct"
        assert done["bytes_done"] == done["bytes_total"] > 1024 * 1024
        assert done["error"] is None
        assert (await a.session(session.id)).state == "handed-off"

        entry = await b.inbox_entry(started.id)
        assert entry.state == "resumed"  # only the launched app confirms
        assert entry.title == "Trip plans"
        assert entry.context == {"draft": "book the train", "cursor": 7}
        assert entry.sender.device_id == pair.a_id
        assert entry.sender.name == "laptop"
        assert len(entry.items) == MESSAGES + 2
        inbox_dir = pair.b.paths.inbox / started.id
        for item in entry.items:
            path = Path(item.path)
            assert path.parent == inbox_dir
            assert sha256_file(path) == item.sha256
            if item.type == "document":
                assert item.sha256 == sums[item.name]
        msg = next(i for i in entry.items if i.name == "msg-060.txt")
        assert await asyncio.to_thread(Path(msg.path).read_text) == "message 60"
        incoming = await b.handoff(started.id)
        assert (incoming.direction, incoming.state) == ("in", "resumed")
        assert incoming.peer.name == "laptop"
        assert not (pair.b.paths.partial / started.id).exists()

        # The same handoff id again is idempotent: nothing stored twice.
        listing = await b.inbox()
        assert [e.id for e in listing].count(started.id) == 1


@pytest.mark.asyncio
async def test_only_chosen_and_accepted_types_cross_the_wire(pair: Pair) -> None:
    doc = pair.root / "selective.bin"
    write_random(doc, 1024 * 1024)
    async with pair.client(pair.a) as a, pair.client(pair.b) as b:
        session = await a.publish(
            "org.example.unlaunched",
            "selective",
            items=[*_messages(5), Item.of_path("document", "selective.bin", doc)],
        )
        message_bytes = sum(len(f"message {i}") for i in range(5))

        # The sender chooses messages only.
        h = await a.send(session.id, pair.b_id, types=["message"])
        done = await wait_state(a, h.id, {"delivered", "failed", "declined"})
        assert done["state"] == "delivered", done
        assert done["types"] == ["message"]
        assert done["bytes_total"] == message_bytes
        assert done["wire"]["data_bytes_sent"] == message_bytes
        # Everything on the channel for this handoff (hello, offer, data, ...) is far below 1 MiB.
        assert 0 < done["wire"]["channel_bytes_sent"] < 64 * 1024
        entry = await b.inbox_entry(h.id)
        assert {i.type for i in entry.items} == {"message"}
        assert len(entry.items) == 5

        # The receiver accepts documents only.
        await b.update_settings(accept_types=["document"])
        try:
            h2 = await a.send(session.id, "desk")
            done2 = await wait_state(a, h2.id, {"delivered", "failed", "declined"})
        finally:
            await b.update_settings(accept_types=["*"])
        assert done2["state"] == "delivered", done2
        assert done2["bytes_total"] == 1024 * 1024
        assert done2["wire"]["data_bytes_sent"] == 1024 * 1024
        entry2 = await b.inbox_entry(h2.id)
        assert [i.name for i in entry2.items] == ["selective.bin"]
        assert entry2.state == "received"  # no app registered for this app id: not launched


@pytest.mark.asyncio
async def test_declined_cleanly_when_handoff_is_disabled(pair: Pair) -> None:
    async with pair.client(pair.a) as a, pair.client(pair.b) as b:
        session = await a.publish("org.example.x", "nope", items=_messages(2))
        await b.update_settings(handoff_enabled=False)
        try:
            h = await a.send(session.id, "desk")
            done = await wait_state(a, h.id, {"declined", "failed", "delivered"})
        finally:
            await b.update_settings(handoff_enabled=True)
        assert done["state"] == "declined"
        assert done["error"]["code"] == "handoff-disabled"
        assert done["attempts"] == 1
        assert (await a.session(session.id)).state == "active"  # the source keeps it
        theirs = await b.handoff(h.id)
        assert theirs.state == "declined"
        with pytest.raises(ApiError) as err:
            await b.inbox_entry(h.id)
        assert err.value.code == "inbox-not-found"
        # The other type refusal: nothing acceptable.
        await b.update_settings(accept_types=["url"])
        try:
            h2 = await a.send(session.id, "desk")
            done2 = await wait_state(a, h2.id, {"declined", "failed", "delivered"})
        finally:
            await b.update_settings(accept_types=["*"])
        assert (done2["state"], done2["error"]["code"]) == ("declined", "type-not-accepted")
        # The second handoff to the same peer reused the first one's connection.
        log = await asyncio.to_thread(pair.a.log.read_text)
        assert "reusing a warm link" in log


@pytest.mark.asyncio
async def test_api_refusals(pair: Pair) -> None:
    async with pair.client(pair.a) as a:
        session = await a.publish("org.example.x", "refusals", items=_messages(1))
        cases: list[tuple[dict[str, Any], int, str]] = [
            ({"session_id": "0" * 32, "target": "desk"}, 404, "session-not-found"),
            ({"session_id": session.id, "target": "nobody"}, 404, "device-not-found"),
            ({"session_id": session.id, "target": "laptop"}, 400, "target-is-self"),
            ({"session_id": session.id, "target": pair.a_id}, 400, "target-is-self"),
            ({"session_id": session.id, "target": "desk", "types": ["BAD"]}, 400, "bad-item-type"),
            ({"session_id": session.id, "target": "desk", "extra": 1}, 400, "unknown-field"),
        ]
        for body, status, code in cases:
            with pytest.raises(ApiError) as err:
                await a.request("POST", "/v1/handoffs", body)
            assert (err.value.status, err.value.code) == (status, code), body
        for path in ("/v1/handoffs/" + "f" * 32, "/v1/handoffs/../x", "/v1/inbox/" + "0" * 32):
            with pytest.raises(ApiError) as err:
                await a.request("GET", path)
            assert err.value.status == 404
        doc = await a.request("GET", "/v1/openapi.json")
        for path in ("/v1/handoffs", "/v1/handoffs/{id}/cancel", "/v1/inbox/{id}/resumed"):
            assert path in doc["paths"]
        assert "Handoff" in doc["components"]["schemas"]


def _cli(pair: Pair, *argv: str) -> str:
    """``handoff --home <laptop> ARGV...``: its stdout (exit status 0 required)."""
    done = subprocess.run(
        [sys.executable, "-m", "handoffd.cli", "--home", str(pair.a.home), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.asyncio
async def test_cancel_stops_a_transfer(pair: Pair) -> None:
    big = pair.root / "cancel.bin"
    write_random(big, 40 * 1024 * 1024)
    async with pair.client(pair.a) as a, pair.client(pair.b) as b:
        session = await a.publish(
            "org.example.x", "cancel me", items=[Item.of_path("document", "c.bin", big)]
        )
        h = await a.send(session.id, "desk")

        async def moving() -> dict[str, Any] | None:
            x: dict[str, Any] = await a.request("GET", f"/v1/handoffs/{h.id}")
            return x if x["state"] == "transferring" and x["bytes_done"] > 0 else None

        await wait_for(moving, what="transfer under way")
        # The CLI lists it (state, path, bytes) and cancels it.
        listing = await asyncio.to_thread(_cli, pair, "handoffs")
        row = next(line for line in listing.splitlines() if line.startswith(h.id))
        assert row.split()[1:5] == ["to", "desk", "transferring", "direct"], row
        out = await asyncio.to_thread(_cli, pair, "cancel", h.id)
        assert out.strip() == f"handoff {h.id} cancelled"
        again = await a.cancel(h.id)  # idempotent
        assert again.state == "cancelled"
        as_json = json.loads(await asyncio.to_thread(_cli, pair, "handoffs", "--json"))
        mine = next(x for x in as_json if x["id"] == h.id)
        assert (mine["state"], mine["path"], mine["direction"]) == ("cancelled", "direct", "out")

        async def told() -> str | None:
            s = (await b.handoff(h.id)).state
            return s if s == "cancelled" else None

        assert await wait_for(told, within=30, what="target sees the cancel") == "cancelled"
        with pytest.raises(ApiError):
            await b.inbox_entry(h.id)
        assert (await a.session(session.id)).state == "active"


@pytest.mark.asyncio
async def test_a_connected_app_is_told_not_launched(pair: Pair) -> None:
    register_notes_app(pair.b)
    url = f"http://handoff/v1/events?app_id={NOTES}"
    stream = subprocess.Popen(  # noqa: ASYNC220 - curl is the independent client here
        [CURL, "-sN", "--unix-socket", str(pair.b.socket), url], stdout=subprocess.PIPE
    )
    try:
        assert stream.stdout is not None
        out = stream.stdout
        first = json.loads(await asyncio.to_thread(out.readline))
        assert first["type"] == "heartbeat"  # subscribed: the app counts as connected
        async with pair.client(pair.a) as a, pair.client(pair.b) as b:
            session = await a.publish(NOTES, "connected", items=_messages(2))
            h = await a.send(session.id, "desk")
            assert (await wait_state(a, h.id, {"delivered", "failed"}))["state"] == "delivered"

            async def received() -> dict[str, Any] | None:
                line = await asyncio.to_thread(out.readline)
                event: dict[str, Any] = json.loads(line)
                ok = event.get("type") == "handoff.received" and event["handoff_id"] == h.id
                return event if ok else None

            event = await wait_for(received, what="handoff.received on the app's stream")
            assert event["app_id"] == NOTES
            assert event["from"]["name"] == "laptop"
            log = await asyncio.to_thread(pair.b.log.read_text)
            assert "app connected; not launching" in log
            assert (await b.inbox_entry(h.id)).state == "received"
            # The connected app resumes it itself.
            await b.confirm_resumed(h.id)
            assert (await wait_state(a, h.id, {"resumed"}, within=60))["state"] == "resumed"
    finally:
        stream.kill()
        stream.wait(timeout=10)
        if stream.stdout is not None:
            stream.stdout.close()


@pytest.mark.asyncio
async def test_a_resent_delivered_handoff_is_idempotent(pair: Pair) -> None:
    data = os.urandom(50_000)
    async with pair.client(pair.a) as a:
        session = await a.publish(
            "org.example.dup", "dup", items=[Item.of_data("document", "d.bin", data)]
        )
        h = await a.send(session.id, "desk")
        first = await wait_state(a, h.id, {"delivered", "failed"})
        assert first["state"] == "delivered"
        assert first["wire"]["data_bytes_sent"] == len(data)
    # The source forgets it was delivered (as after a crash before recording it) ...
    assert pair.a.stop() == 0
    db = sqlite3.connect(pair.a.paths.state_db, timeout=10)
    try:
        with db:
            db.execute("UPDATE handoffs SET state = 'retrying' WHERE id = ?", (h.id,))
    finally:
        db.close()
    inbox_file = pair.b.paths.inbox / h.id / "d.bin"
    before = inbox_file.stat()
    pair.a.start()  # ... and offers the same signed manifest again on restart
    async with pair.client(pair.a) as a, pair.client(pair.b) as b:
        again = await wait_state(a, h.id, {"delivered", "failed"})
        assert again["state"] == "delivered"
        assert again["attempts"] == first["attempts"] + 1
        assert again["wire"]["data_bytes_sent"] == 0  # answered "delivered" at once
        assert [e.id for e in await b.inbox()].count(h.id) == 1
        after = inbox_file.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


@pytest.mark.asyncio
async def test_resume_notice_waits_for_a_source_that_is_down(pair: Pair) -> None:
    async with pair.client(pair.a) as a:
        session = await a.publish("org.example.later", "later", items=_messages(3))
        h = await a.send(session.id, "desk")
        assert (await wait_state(a, h.id, {"delivered", "failed"}))["state"] == "delivered"
    assert pair.a.stop() == 0
    async with pair.client(pair.b) as b:
        entry = await b.confirm_resumed(h.id)  # the source is down: the notice is kept
        assert entry.state == "resumed"
        assert (await b.confirm_resumed(h.id)).state == "resumed"  # idempotent
    pair.a.start()
    async with pair.client(pair.a) as a:
        final = await wait_state(a, h.id, {"resumed"}, within=120)
        assert final["state"] == "resumed"
        assert (await a.session(session.id)).state == "handed-off"


@pytest.mark.asyncio
async def test_lan_handoff_works_with_the_server_stopped(pair: Pair) -> None:
    """Last in the module: it stops the shared server."""
    pair.server.stop()
    data = os.urandom(4096)
    async with pair.client(pair.a) as a, pair.client(pair.b) as b:
        session = await a.publish(
            "org.example.offline", "offline", items=[Item.of_data("document", "d.bin", data)]
        )
        h = await a.send(session.id, "desk")  # resolved from the device cache
        done = await wait_state(a, h.id, {"delivered", "failed", "declined"})
        assert done["state"] == "delivered", done
        entry = await b.inbox_entry(h.id)
        assert entry.items[0].sha256 == hashlib.sha256(data).hexdigest()
        assert await asyncio.to_thread(Path(entry.items[0].path).read_bytes) == data
        # The target's app confirms with the server down: the source learns it.
        await b.confirm_resumed(h.id)
        final = await wait_state(a, h.id, {"resumed"}, within=60)
        assert final["state"] == "resumed"
        assert (await a.session(session.id)).state == "handed-off"


@pytest.mark.asyncio
async def test_a_stopped_daemon_says_goodbye(pair: Pair) -> None:
    """Last: SIGTERM on the desk ends cleanly, and the laptop hears it leave (mDNS goodbye)
    long before the records' TTL would expire; the desk comes back afterwards."""
    async with pair.client(pair.a) as a:
        events = a.events(heartbeats=True)
        try:
            first = await asyncio.wait_for(events.__anext__(), 10)  # subscribed from here on
            assert first["type"] == "heartbeat"
            assert await asyncio.to_thread(pair.b.stop) == 0

            async def gone() -> dict[str, Any] | None:
                async for event in events:
                    if event.get("type") == "device.gone" and event["device_id"] == pair.b_id:
                        return event
                return None

            assert await asyncio.wait_for(gone(), 30) is not None
        finally:
            await events.aclose()
    pair.b.start()
