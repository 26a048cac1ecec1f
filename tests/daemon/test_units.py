"""Pure unit tests: the event bus, settings and their TOML file, the store's schema and its
failures."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import stat
import tomllib
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from handoffd import identity
from handoffd.config import Settings, SettingsFile, dumps_toml, load_settings
from handoffd.control import schema
from handoffd.control.server import error_middleware
from handoffd.devicestate import DeviceState, ServerPin
from handoffd.errors import ApiError, ConfigError, StoreError
from handoffd.events import EventBus
from handoffd.items import Item
from handoffd.paths import Paths
from handoffd.store import MIGRATIONS, Store


@pytest.mark.asyncio
async def test_slow_subscriber_is_dropped_others_keep_receiving() -> None:
    bus = EventBus(maxsize=4)
    slow, fast = bus.subscribe(), bus.subscribe()
    received = []
    for n in range(10):
        bus.publish({"type": "tick", "n": n})
        event = await fast.get()
        assert event is not None
        received.append(event["n"])
    assert received == list(range(10))
    assert slow.dropped
    assert bus.subscriber_count == 1
    drained = [e async for e in slow]
    assert [e["n"] for e in drained[:-1]] == [0, 1, 2, 3]
    assert drained[-1]["type"] == "dropped"
    assert await slow.get() is None  # stays ended
    bus.close()
    assert await fast.get() is None


def test_settings_validation() -> None:
    s = Settings(device_name="box")
    assert s.accepts("message")
    assert s.accepts("my-app-word")
    with pytest.raises(ConfigError) as info:
        s.replace(accept_types=["*", "message"])
    assert info.value.code == "setting-invalid"
    with pytest.raises(ConfigError):
        s.replace(unicast_peers=["host-without-port"])
    with pytest.raises(ConfigError):
        s.replace(device_name="a\nb")
    with pytest.raises(ConfigError) as info:
        s.replace(nope=1)
    assert info.value.code == "setting-unknown"
    assert s.replace(unicast_peers=["[2001:db8::1]:7443"]).unicast_peers == ("[2001:db8::1]:7443",)


@given(name=st.text(min_size=1, max_size=64).filter(lambda t: t.strip() == t and t.isprintable()))
def test_toml_round_trip(name: str) -> None:
    s = Settings(device_name=name, accept_types=("message", "x_y-z"), inbox_ttl=3600)
    assert Settings.from_mapping(tomllib.loads(dumps_toml(s.to_json()))) == s


@pytest.mark.asyncio
async def test_settings_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    assert await asyncio.to_thread(load_settings, path) == Settings()
    holder = await asyncio.to_thread(SettingsFile.load, path)
    await holder.update({"auto_accept": False})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (await asyncio.to_thread(load_settings, path)).auto_accept is False
    with pytest.raises(ConfigError):
        await holder.update({"auto_accept": "no"})
    assert holder.current.auto_accept is False
    path.write_text("auto_accept = [\n")
    with pytest.raises(ConfigError) as info:
        await holder.reload()
    assert info.value.code == "config-invalid"
    assert holder.current.auto_accept is False


def test_store_schema_and_refusals(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state.db")
    try:
        assert store.schema_version == len(MIGRATIONS)
        rec = store.create_session(
            "org.x", "t", {"a": 1}, [Item("url", "u", "text/uri-list", "text", 3, text="x:y")]
        )
        assert store.get_session(rec.id) == rec
        store.set_session_state(rec.id, "withdrawn")
        withdrawn = store.get_session(rec.id)
        assert withdrawn is not None
        assert withdrawn.items[0].text is None  # content dropped
        with pytest.raises(StoreError) as info:
            store.update_session(rec.id, title="x")
        assert info.value.code == "session-withdrawn"
        h = store.create_handoff(
            "h1", direction="out", peer="P", state="pending", session_id=rec.id, types=["url"]
        )
        assert store.update_handoff("h1", state="transferring", bytes_done=5).bytes_done == 5
        assert h.types == ("url",)
    finally:
        store.close()
    assert stat.S_IMODE((tmp_path / "state.db").stat().st_mode) == 0o600
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(StoreError) as info:
        Store.open(tmp_path / "state.db")
    assert info.value.code == "store-too-new"


def _cap(store: Store) -> None:
    """Let the database grow no more (SQLite's ``max_page_count``): every write that needs a
    new page fails as on a full disk (``SQLITE_FULL``, "database or disk is full")."""
    db = store._db
    pages = int(db.execute("PRAGMA page_count").fetchone()[0])
    db.execute(f"PRAGMA max_page_count = {pages}")


def _blob(size: int) -> Item:
    return Item("data", "d.bin", "application/octet-stream", "data", size, data=b"x" * size)


@pytest.mark.asyncio
async def test_store_full_is_a_store_error_and_reads_go_on(tmp_path: Path) -> None:
    store = await asyncio.to_thread(Store.open, tmp_path / "state.db")
    try:
        kept = await store.run(store.create_session, "org.x", "kept", {}, [_blob(10)])
        await store.run(_cap, store)
        with pytest.raises(StoreError) as info:
            await store.run(store.create_session, "org.x", "t", {}, [_blob(1024 * 1024)])
        assert info.value.code == "store-full"
        assert "database or disk is full" in info.value.message
        with pytest.raises(StoreError) as other:  # any other SQLite failure
            await store.run(store._db.execute, "SELECT nothing FROM nowhere")
        assert other.value.code == "store-failed"
        # Rolled back: nothing half-written; what was there is still read.
        assert [s.id for s in await store.run(store.list_sessions)] == [kept.id]
        assert await store.run(store.get_session, kept.id) == kept
    finally:
        await asyncio.to_thread(store.close)


@pytest.mark.asyncio
async def test_control_api_answers_a_full_store_with_507(tmp_path: Path) -> None:
    store = await asyncio.to_thread(Store.open, tmp_path / "state.db")

    async def publish(request: web.Request) -> web.Response:
        await store.run(store.create_session, "org.x", "t", {}, [_blob(1024 * 1024)])
        return web.json_response({})

    app = web.Application(middlewares=[error_middleware])
    app.router.add_post("/v1/sessions", publish)
    client: TestClient[web.Request, web.Application] = TestClient(TestServer(app))
    await client.start_server()
    try:
        await store.run(_cap, store)
        resp = await client.post("/v1/sessions")
        assert resp.status == 507
        body = await resp.json()
        assert body["error"]["code"] == "store-full", body
    finally:
        await client.close()
        await asyncio.to_thread(store.close)


@given(st.text(max_size=300))
def test_item_names_never_escape(name: str) -> None:
    if not schema.is_safe_name(name):
        with pytest.raises(ApiError) as info:
            schema.check_item_name(name)
        assert info.value.code == "bad-item-name"
        return
    assert schema.check_item_name(name) == name
    assert "/" not in name
    assert "\\" not in name
    assert ".." not in name
    assert all(ord(c) >= 0x20 for c in name)
    assert 0 < len(name.encode()) <= 255


def test_renewal_threshold(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    ca = identity.create_account_ca(identity.new_account_id(), now=now)
    key = identity.generate_device_key()
    device_id = identity.device_id_for(key.public_key())

    def state(days: int) -> DeviceState:
        cert = identity.build_device_cert(
            ca, key.public_key(), device_id=device_id, now=now, lifetime=dt.timedelta(days=days)
        )
        trust = identity.TrustAnchor.from_ca(ca.cert)
        return DeviceState(Paths.resolve(tmp_path), key, cert, trust, ServerPin("http://s", None))

    assert not state(30).needs_renewal(now)
    assert state(9).needs_renewal(now)
    assert not DeviceState(Paths.resolve(tmp_path), key).needs_renewal(now)
