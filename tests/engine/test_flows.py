"""The engine's flows in one process: two engines joined by in-memory channels."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from handoffd.errors import InvalidRequestError, NotFoundError
from handoffd.handoff.timings import Timings
from handoffd.store import Store
from tests.engine.kit import Node, data_item, pair, text_item

pytestmark = pytest.mark.asyncio


async def _inbox_bytes(node: Node, handoff_id: str) -> dict[str, bytes]:
    entry = await node.engine.inbox_entry(handoff_id)
    paths = {i["name"]: Path(i["path"]) for i in entry.items}
    return {name: await asyncio.to_thread(p.read_bytes) for name, p in paths.items()}


async def test_offer_delivered_resumed(tmp_path: Path) -> None:
    async with pair(tmp_path) as (a, b):
        sid = await a.session(text_item("hello"), data_item(b"\x00\x01" * 1000))
        record = await a.engine.start_handoff(sid, b.id, None)
        await a.wait_state(record.id, "delivered")
        got = await b.wait_state(record.id, "delivered")
        assert got.direction == "in"
        assert await _inbox_bytes(b, record.id) == {
            "note.txt": b"hello",
            "blob.bin": b"\x00\x01" * 1000,
        }
        out = await a.engine.get_handoff(record.id)
        assert out["path"] == "direct"
        assert out["wire"]["data_bytes_sent"] == 5 + 2000
        # The app resumes: the source is told over the exchange still open (through its driver).
        await b.engine.confirm_resumed(record.id)
        await a.wait_state(record.id, "resumed")
        session = await a.store.run(a.store.get_session, sid)
        assert session is not None
        assert session.state == "handed-off"
        assert (await b.engine.inbox_entry(record.id)).state == "resumed"


async def test_decline_by_policy_is_final(tmp_path: Path) -> None:
    def only_urls(a: Node, b: Node) -> None:
        b.settings.current = b.settings.current.replace(accept_types=("url",))

    async with pair(tmp_path, configure=only_urls) as (a, b):
        sid = await a.session(text_item("no"))
        record = await a.engine.start_handoff(sid, b.id, None)
        # Nothing is accepted: an offer of only unaccepted types is delivered empty, or declined.
        final = await a.wait_state(record.id, "declined", "delivered")
        if final.state == "declined":
            assert (await a.engine.get_handoff(record.id))["error"]["code"]
            assert final.attempts == 1  # a decline is not retried


async def test_disabled_receiver_declines(tmp_path: Path) -> None:
    def disabled(a: Node, b: Node) -> None:
        b.settings.current = b.settings.current.replace(handoff_enabled=False)

    async with pair(tmp_path, configure=disabled) as (a, b):
        record = await a.engine.start_handoff(await a.session(text_item("x")), b.id, None)
        final = await a.wait_state(record.id, "declined")
        assert (await a.engine.get_handoff(record.id))["error"]["code"] == "handoff-disabled"
        assert final.attempts == 1
        assert (await b.wait_state(record.id, "declined")).direction == "in"


async def test_interrupted_transfer_resumes_without_resending(tmp_path: Path) -> None:
    payload = os.urandom(9 * 1024 * 1024)  # several checkpoints (1 MiB each)

    async with pair(tmp_path) as (a, b):
        a.direct.breaks.append(5 * 1024 * 1024)  # the first connection is lost mid-stream
        sid = await a.session(data_item(payload, "big.bin"))
        record = await a.engine.start_handoff(sid, b.id, None)
        done = await a.wait_state(record.id, "delivered", within=60)
        assert done.attempts >= 2
        assert (await _inbox_bytes(b, record.id))["big.bin"] == payload
        wire = (await a.engine.get_handoff(record.id))["wire"]
        # The receiver kept what it acknowledged: the last attempt sent less than everything.
        assert wire["bytes_already_held"] > 0
        assert wire["data_bytes_sent"] + wire["bytes_already_held"] == len(payload)
        assert hashlib.sha256((await _inbox_bytes(b, record.id))["big.bin"]).digest() == (
            hashlib.sha256(payload).digest()
        )


async def test_relay_first_then_moves_to_direct_at_a_chunk_boundary(tmp_path: Path) -> None:
    payload = os.urandom(16 * 1024 * 1024)
    async with pair(tmp_path) as (a, b):
        a.direct.reachable = False
        a.relay.pace = 0.005  # the relay is slow: the upgrade comes mid-stream
        sid = await a.session(data_item(payload, "big.bin"))
        record = await a.engine.start_handoff(sid, b.id, None)
        await a.wait_state(record.id, "transferring")
        assert (await a.engine.get_handoff(record.id))["path"] == "relay"
        a.direct.reachable = True  # the upgrader finds the direct path
        await a.wait_state(record.id, "delivered", within=60)
        assert (await _inbox_bytes(b, record.id))["big.bin"] == payload
        assert a.direct.dialed, "the direct path was dialed"
        relayed = sum(c.bytes_sent for c in a.relay.dialed)
        direct = sum(c.bytes_sent for c in a.direct.dialed)
        assert direct > 0
        # Acknowledged bytes are never sent again: both paths together carried one copy.
        assert relayed + direct < len(payload) + 2 * 1024 * 1024


async def test_warm_link_is_reused_for_the_next_handoff(tmp_path: Path) -> None:
    async with pair(tmp_path) as (a, b):
        first = await a.engine.start_handoff(await a.session(text_item("1")), b.id, None)
        await a.wait_state(first.id, "delivered")
        second = await a.engine.start_handoff(await a.session(text_item("2")), b.id, None)
        await a.wait_state(second.id, "delivered")
        assert len(a.direct.dialed) == 1  # one channel carried both


async def test_cancel_while_retrying(tmp_path: Path) -> None:
    slow = Timings(backoff_base=30.0, backoff_max=30.0, discovery_grace=0.0)
    async with pair(tmp_path, timings=slow) as (a, b):
        a.direct.reachable = a.relay.reachable = False
        record = await a.engine.start_handoff(await a.session(text_item("x")), b.id, None)
        retrying = await a.wait_state(record.id, "retrying")
        assert (await a.engine.get_handoff(retrying.id))["error"]["code"] == "peer-not-found"
        cancelled = await a.engine.cancel(record.id)
        assert cancelled.state == "cancelled"
        assert (await a.engine.cancel(record.id)).state == "cancelled"  # idempotent
        with pytest.raises(NotFoundError):
            await a.engine.cancel("0" * 32)


async def test_unreachable_peer_fails_after_max_attempts(tmp_path: Path) -> None:
    few = Timings(max_attempts=3, backoff_base=0.01, backoff_max=0.02, discovery_grace=0.0)
    async with pair(tmp_path, timings=few) as (a, b):
        a.direct.reachable = a.relay.reachable = False
        record = await a.engine.start_handoff(await a.session(text_item("x")), b.id, None)
        failed = await a.wait_state(record.id, "failed")
        assert failed.attempts == 3
        assert (await a.engine.get_handoff(record.id))["error"]["code"] == "peer-not-found"


async def test_a_full_state_database_declines_as_no_disk_space(tmp_path: Path) -> None:
    async with pair(tmp_path) as (a, b):
        await b.store.run(_no_new_pages, b.store)
        # A large context makes the offer the receiver records need new pages.
        sid = await a.session(text_item("x"), context={"big": "y" * 30_000})
        record = await a.engine.start_handoff(sid, b.id, None)
        await a.wait_state(record.id, "declined")
        assert (await a.engine.get_handoff(record.id))["error"]["code"] == "no-disk-space"


async def test_api_errors_are_domain_errors(tmp_path: Path) -> None:
    async with pair(tmp_path) as (a, b):
        with pytest.raises(NotFoundError) as nf:
            await a.engine.start_handoff("f" * 32, b.id, None)
        assert nf.value.code == "session-not-found"
        with pytest.raises(InvalidRequestError) as me:
            await a.engine.start_handoff(await a.session(text_item("x")), a.id, None)
        assert me.value.code == "target-is-self"
        with pytest.raises(NotFoundError):
            await a.engine.get_handoff("nope")
        with pytest.raises(NotFoundError) as inbox:
            await a.engine.inbox_entry("0" * 32)
        assert inbox.value.code == "inbox-not-found"


async def test_events_tell_the_states_in_order(tmp_path: Path) -> None:
    async with pair(tmp_path) as (a, b):
        sub = a.events.subscribe()
        record = await a.engine.start_handoff(await a.session(text_item("e")), b.id, None)
        await a.wait_state(record.id, "delivered")
        states: list[str] = []
        while len(states) < 4:
            event = await asyncio.wait_for(sub.get(), 10)
            assert event is not None
            if event["type"] == "handoff.state":
                states.append(event["state"])
        sub.close()
        assert states == ["pending", "connecting", "transferring", "delivered"]


async def test_the_registered_app_is_launched_and_resumes(tmp_path: Path) -> None:
    marker = tmp_path / "launched.txt"
    script = "import os,sys; open(sys.argv[1],'a').write(os.environ['HANDOFF_ID'])"

    def launchable(a: Node, b: Node) -> None:
        b.settings.current = b.settings.current.replace(auto_accept=True)
        b.store.put_app("org.example.notes", [sys.executable, "-c", script, str(marker)])

    async with pair(tmp_path, configure=launchable) as (a, b):
        sub = b.events.subscribe()
        record = await a.engine.start_handoff(await a.session(text_item("go")), b.id, None)
        received = await _next_of(sub, "handoff.received")
        assert received["handoff_id"] == record.id
        assert received["from"] == {"device_id": a.id, "name": "ay"}
        await _file_says(marker, record.id)
        sub.close()
        await b.engine.confirm_resumed(record.id)
        await a.wait_state(record.id, "resumed")


async def test_a_connected_app_is_not_launched(tmp_path: Path) -> None:
    marker = tmp_path / "launched.txt"
    script = "import os,sys; open(sys.argv[1],'a').write(os.environ['HANDOFF_ID'] + ' ')"

    def launchable(a: Node, b: Node) -> None:
        b.settings.current = b.settings.current.replace(auto_accept=True)
        b.store.put_app("org.example.notes", [sys.executable, "-c", script, str(marker)])

    async with pair(tmp_path, configure=launchable) as (a, b):
        b.engine.app_clients["org.example.notes"] += 1  # its event stream is open
        first = await a.engine.start_handoff(await a.session(text_item("1")), b.id, None)
        # Delivered on a means b committed, and so decided about launching, before answering.
        await a.wait_state(first.id, "delivered")
        del b.engine.app_clients["org.example.notes"]  # the app went away
        second = await a.engine.start_handoff(await a.session(text_item("2")), b.id, None)
        await a.wait_state(second.id, "delivered")
        await _file_says(marker, f"{second.id} ")  # only the second one launched it


async def test_only_chosen_and_accepted_types_cross(tmp_path: Path) -> None:
    doc = os.urandom(300_000)
    async with pair(tmp_path) as (a, b):
        sid = await a.session(text_item("m1", "m1.txt"), text_item("m2", "m2.txt"), data_item(doc))
        h = await a.engine.start_handoff(sid, b.id, ["message"])
        await a.wait_state(h.id, "delivered")
        done = await a.engine.get_handoff(h.id)
        assert done["types"] == ["message"]
        assert done["bytes_total"] == 4
        assert done["wire"]["data_bytes_sent"] == 4
        assert 0 < done["wire"]["channel_bytes_sent"] < 64 * 1024
        assert sorted(await _inbox_bytes(b, h.id)) == ["m1.txt", "m2.txt"]
        b.settings.current = b.settings.current.replace(accept_types=("document",))
        h2 = await a.engine.start_handoff(sid, b.id, None)
        await a.wait_state(h2.id, "delivered")
        done2 = await a.engine.get_handoff(h2.id)
        assert done2["bytes_total"] == len(doc)
        assert done2["wire"]["data_bytes_sent"] == len(doc)
        assert await _inbox_bytes(b, h2.id) == {"blob.bin": doc}


async def test_cancel_stops_a_transfer_and_the_target_hears_it(tmp_path: Path) -> None:
    async with pair(tmp_path) as (a, b):
        a.direct.pace = 0.01  # slow enough to cancel mid-stream
        sid = await a.session(data_item(os.urandom(8 * 1024 * 1024)))
        h = await a.engine.start_handoff(sid, b.id, None)
        await a.wait_state(h.id, "transferring")
        assert (await a.engine.cancel(h.id)).state == "cancelled"
        assert (await a.engine.cancel(h.id)).state == "cancelled"  # idempotent
        await b.wait_state(h.id, "cancelled")
        with pytest.raises(NotFoundError):
            await b.engine.inbox_entry(h.id)
        assert not (b.paths.partial / h.id).exists()  # what it held is gone
        session = await a.store.run(a.store.get_session, sid)
        assert session is not None
        assert session.state == "active"


async def test_a_resent_delivered_handoff_is_idempotent(tmp_path: Path) -> None:
    data = os.urandom(50_000)
    async with pair(tmp_path) as (a, b):
        h = await a.engine.start_handoff(await a.session(data_item(data)), b.id, None)
        first = await a.wait_state(h.id, "delivered")
        await a.stop()
        # The source forgets it was delivered (as after a crash before recording it) ...
        await a.store.run(a.store.update_handoff, h.id, state="retrying")
        inbox_file = b.paths.inbox / h.id / "blob.bin"
        before = inbox_file.stat()
        assert a.tg is not None
        await a.restart(a.tg)  # ... and offers the same signed manifest again
        again = await a.wait_state(h.id, "delivered")
        assert again.attempts == first.attempts + 1
        assert (await a.engine.get_handoff(h.id))["wire"]["data_bytes_sent"] == 0
        assert [e.id for e in await b.engine.inbox()].count(h.id) == 1
        after = inbox_file.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


async def test_outgoing_handoffs_continue_after_a_restart(tmp_path: Path) -> None:
    slow = Timings(backoff_base=0.05, backoff_max=0.1, discovery_grace=0.0)
    async with pair(tmp_path, timings=slow) as (a, b):
        a.direct.reachable = a.relay.reachable = False
        h = await a.engine.start_handoff(await a.session(text_item("later")), b.id, None)
        await a.wait_state(h.id, "retrying")
        await a.stop()
        a.direct.reachable = True
        assert a.tg is not None
        await a.restart(a.tg)
        await a.wait_state(h.id, "delivered")
        assert (await _inbox_bytes(b, h.id)) == {"note.txt": b"later"}


async def _next_of(sub: Any, kind: str) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            event = await sub.get()
            assert event is not None
            if event["type"] == kind:
                return dict(event)


def _read_text(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


async def _file_says(path: Path, text: str) -> None:
    """Until ``path`` holds ``text`` (a launched app writes it; bounded)."""
    async with asyncio.timeout(30):
        while True:
            if await asyncio.to_thread(_read_text, path) == text:
                return
            await asyncio.sleep(0.05)


def _no_new_pages(store: Store) -> None:
    """No new page: a write that needs one fails as on a full disk (SQLITE_FULL). Blocking."""
    with store.transaction() as db:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages}")
