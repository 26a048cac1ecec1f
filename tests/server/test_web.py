"""Web pages in-process: login limits, CSRF on every form, escaping, headers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from handoffd import identity
from handoffd.server.app import ServerConfig, make_app
from handoffd.server.store import Store

PASSWORD = "pw-for-tests-0123"


@pytest_asyncio.fixture
async def site(
    tmp_path: Path,
) -> AsyncIterator[tuple[TestClient[web.Request, web.Application], Store]]:
    store = Store.open(tmp_path / "data")
    account = store.create_account("alice", PASSWORD)
    invite = store.create_invite(account.account_id, created_by="cli")
    key = identity.generate_device_key()
    store.join(
        token=invite.secrets.token, csr_pem=identity.csr_to_pem(identity.make_csr(key)),
        name="phone", platform="test",
    )  # fmt: skip
    app = make_app(store, ServerConfig(data_dir=tmp_path / "data"))
    client: TestClient[web.Request, web.Application] = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client, store
    finally:
        await client.close()
        store.close()


async def _login(client: TestClient[web.Request, web.Application]) -> str:
    resp = await client.post(
        "/login", data={"account": "alice", "password": PASSWORD}, allow_redirects=False
    )
    assert resp.status == 303
    page = await (await client.get("/devices")).text()
    m = re.search(r'name="csrf" value="([^"]+)"', page)
    assert m is not None
    return m.group(1)


@pytest.mark.asyncio
async def test_pages_need_login_and_send_security_headers(
    site: tuple[TestClient[web.Request, web.Application], Store],
) -> None:
    client, _ = site
    resp = await client.get("/devices", allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == "/login"
    resp = await client.get("/login")
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert "script-src" not in resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["Referrer-Policy"] == "no-referrer"


@pytest.mark.asyncio
async def test_login_attempts_are_rate_limited(
    site: tuple[TestClient[web.Request, web.Application], Store],
) -> None:
    client, _ = site
    statuses = []
    for _ in range(8):
        resp = await client.post("/login", data={"account": "alice", "password": "wrong"})
        statuses.append(resp.status)
    assert statuses[0] == 401
    assert statuses[-1] == 429
    # the right password is refused too while the limit holds
    resp = await client.post("/login", data={"account": "alice", "password": PASSWORD})
    assert resp.status == 429


@pytest.mark.asyncio
async def test_every_form_needs_the_csrf_token_and_names_are_escaped(
    site: tuple[TestClient[web.Request, web.Application], Store],
) -> None:
    client, store = site
    csrf = await _login(client)
    device = store.list_devices(store.resolve_account("alice").account_id)[0]
    for path, form in (
        (f"/devices/{device.device_id}/rename", {"name": "x"}),
        (f"/devices/{device.device_id}/revoke", {"confirm": "yes"}),
        ("/logout", {}),
    ):
        resp = await client.post(path, data=form, allow_redirects=False)
        assert resp.status == 403, path
    resp = await client.post(
        f"/devices/{device.device_id}/rename", data={"name": "<b>pwn</b>", "csrf": csrf},
        allow_redirects=False,
    )  # fmt: skip
    assert resp.status == 303
    page = await (await client.get("/devices")).text()
    assert "<b>pwn</b>" not in page
    assert "&lt;b&gt;pwn&lt;/b&gt;" in page
    resp = await client.post("/logout", data={"csrf": csrf}, allow_redirects=False)
    assert resp.status == 303
    assert (await client.get("/devices", allow_redirects=False)).status == 303


@pytest.mark.asyncio
async def test_add_device_shows_qr_and_code(
    site: tuple[TestClient[web.Request, web.Application], Store],
) -> None:
    client, _ = site
    await _login(client)
    page = await (await client.get("/add-device")).text()
    assert "<svg" in page
    assert re.search(r'class="code">[0-9A-Z]{4}-[0-9A-Z]{4}', page)
