"""Web pages in-process: login limits, CSRF on every form, escaping, headers, revoke flow."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from handoffd import identity
from handoffd.server.app import ServerConfig, make_app
from handoffd.server.store import Store

PASSWORD = "pw-for-tests-0123"
Client = TestClient[web.Request, web.Application]
HEADERS = {
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


@pytest_asyncio.fixture
async def site(tmp_path: Path) -> AsyncIterator[tuple[Client, Store]]:
    store = Store.open(tmp_path / "data")
    account = store.create_account("alice", PASSWORD)
    invite = store.create_invite(account.account_id, created_by="cli")
    key = identity.generate_device_key()
    store.join(
        token=invite.secrets.token, csr_pem=identity.csr_to_pem(identity.make_csr(key)),
        name="phone", platform="test",
    )  # fmt: skip
    app = make_app(store, ServerConfig(data_dir=tmp_path / "data", invite_ttl=300))
    client: Client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client, store
    finally:
        await client.close()
        store.close()


def _csrf(page: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', page)
    assert m is not None, page
    return m.group(1)


async def _post_login(client: Client, password: str) -> tuple[int, str]:
    token = _csrf(await (await client.get("/login")).text())
    resp = await client.post(
        "/login", data={"account": "alice", "password": password, "csrf": token},
        allow_redirects=False,
    )  # fmt: skip
    return resp.status, await resp.text()


async def _login(client: Client) -> str:
    status, _ = await _post_login(client, PASSWORD)
    assert status == 303
    return _csrf(await (await client.get("/devices")).text())


def _assert_headers(resp: ClientResponse) -> None:
    headers = resp.headers
    for name, value in HEADERS.items():
        assert headers.get(name) == value, name
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp
    # This origin's stylesheet and script files only: nothing inline, no eval.
    assert "script-src 'self';" in csp
    assert "style-src 'self';" in csp
    assert "unsafe" not in csp


def _assert_no_inline_code(page: str) -> None:
    scripts = re.findall(r"<script[^>]*>", page)
    assert scripts, page
    assert all('src="/static/' in tag for tag in scripts), scripts
    assert re.search(r"<script[^>]*>[^<]", page) is None  # no inline body
    assert "<style" not in page
    assert " style=" not in page
    assert re.search(r" on[a-z]+=", page) is None  # no event handler attributes


@pytest.mark.asyncio
async def test_pages_need_login_and_every_response_has_security_headers(
    site: tuple[Client, Store],
) -> None:
    client, _ = site
    for path in ("/devices", "/add-device", "/"):
        resp = await client.get(path, allow_redirects=False)
        assert resp.status == 303, path
        assert resp.headers["Location"] == "/login"
        _assert_headers(resp)
    resp = await client.get("/login")
    assert resp.status == 200
    _assert_headers(resp)
    _assert_no_inline_code(await resp.text())
    _assert_headers(await client.get("/no-such-page"))
    _assert_headers(await client.post("/login", data={"account": "alice", "password": "x"}))
    # The JSON API is left to its own middleware.
    assert "X-Frame-Options" not in (await client.get("/v1/info")).headers


@pytest.mark.asyncio
async def test_login_form_needs_its_token_and_sets_a_strict_cookie(
    site: tuple[Client, Store],
) -> None:
    client, _ = site
    resp = await client.post(
        "/login", data={"account": "alice", "password": PASSWORD}, allow_redirects=False
    )
    assert resp.status == 403
    token = _csrf(await (await client.get("/login")).text())
    resp = await client.post(
        "/login", data={"account": "alice", "password": PASSWORD, "csrf": token + "x"},
        allow_redirects=False,
    )  # fmt: skip
    assert resp.status == 403
    resp = await client.post(
        "/login", data={"account": "alice", "password": PASSWORD, "csrf": token},
        allow_redirects=False,
    )  # fmt: skip
    assert resp.status == 303
    cookie = resp.cookies["handoff_session"]
    assert cookie["httponly"]
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == "/"
    assert len(cookie.value) >= 40  # 256 random bits, base64url
    # Logged in: /login goes to the devices.
    resp = await client.get("/login", allow_redirects=False)
    assert resp.headers["Location"] == "/devices"


@pytest.mark.asyncio
async def test_login_attempts_are_rate_limited(
    site: tuple[Client, Store], caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = site
    statuses = [(await _post_login(client, "wrong"))[0] for _ in range(7)]
    assert statuses[0] == 401
    assert statuses[-1] == 429
    # the right password is refused too while the limit holds, with a clear message
    with caplog.at_level(logging.INFO):
        status, text = await _post_login(client, PASSWORD)
    assert status == 429
    assert "Too many login attempts" in text
    assert PASSWORD not in caplog.text


@pytest.mark.asyncio
async def test_every_form_needs_the_csrf_token_and_names_are_escaped(
    site: tuple[Client, Store],
) -> None:
    client, store = site
    csrf = await _login(client)
    device = store.list_devices(store.resolve_account("alice").account_id)[0]
    for path, form in (
        (f"/devices/{device.device_id}/rename", {"name": "x"}),
        (f"/devices/{device.device_id}/revoke", {"confirm": "yes"}),
        ("/logout", {}),
    ):
        for bad in ({}, {"csrf": "forged"}):
            resp = await client.post(path, data={**form, **bad}, allow_redirects=False)
            assert resp.status == 403, path
            _assert_headers(resp)
    assert store.list_devices(device.account_id)[0].name == "phone"
    assert not store.list_devices(device.account_id)[0].revoked
    resp = await client.post(
        f"/devices/{device.device_id}/rename", data={"name": "<b>pwn</b>", "csrf": csrf},
        allow_redirects=False,
    )  # fmt: skip
    assert resp.status == 303
    page = await (await client.get("/devices")).text()
    assert "<b>pwn</b>" not in page
    assert "&lt;b&gt;pwn&lt;/b&gt;" in page
    resp = await client.post(
        f"/devices/{device.device_id}/rename", data={"name": "bad\x00name", "csrf": csrf}
    )
    assert resp.status == 400
    resp = await client.post("/logout", data={"csrf": csrf}, allow_redirects=False)
    assert resp.status == 303
    assert (await client.get("/devices", allow_redirects=False)).status == 303
    # The old token dies with the session.
    resp = await client.post(
        f"/devices/{device.device_id}/revoke", data={"confirm": "yes", "csrf": csrf},
        allow_redirects=False,
    )  # fmt: skip
    assert resp.status == 303
    assert resp.headers["Location"] == "/login"
    assert not store.list_devices(device.account_id)[0].revoked


@pytest.mark.asyncio
async def test_devices_page_and_revoke_asks_first(site: tuple[Client, Store]) -> None:
    client, store = site
    csrf = await _login(client)
    device = store.list_devices(store.resolve_account("alice").account_id)[0]
    page = await (await client.get("/devices")).text()
    for text in (
        "phone",
        identity.format_device_id(device.device_id),
        "test",
        "Created",
        "offline",
    ):
        assert text in page
    path = f"/devices/{device.device_id}/revoke"
    resp = await client.post(path, data={"csrf": csrf})
    assert resp.status == 200
    assert "Yes, revoke it" in await resp.text()
    assert not store.list_devices(device.account_id)[0].revoked
    resp = await client.post(path, data={"csrf": csrf, "confirm": "yes"}, allow_redirects=False)
    assert resp.status == 303
    assert store.list_devices(device.account_id)[0].revoked
    page = await (await client.get("/devices")).text()
    assert "revoked" in page
    assert path not in page
    # Another account's device, or none, is not found.
    resp = await client.post("/devices/AAAA/revoke", data={"csrf": csrf, "confirm": "yes"})
    assert resp.status == 404


@pytest.mark.asyncio
async def test_add_device_shows_qr_code_and_command(site: tuple[Client, Store]) -> None:
    client, _ = site
    await _login(client)
    resp = await client.get("/add-device")
    page = await resp.text()
    assert "<svg" in page
    assert "<?xml" not in page
    code = re.search(r'class="code">([0-9A-Z]{4}(?:-[0-9A-Z]{4})+)<', page)
    assert code is not None
    assert f"handoff pair {code.group(1)}@http://" in page  # the whole command, as printed
    assert "in 5 min (at " in page  # the expiry as every other place writes it


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "bad", ["é", "\u00ff" * 64, "🙂", "%ED%A0%80"], ids=["e-acute", "latin1", "emoji", "surrogate"]
)
async def test_non_ascii_csrf_tokens_are_refused_not_a_500(
    site: tuple[Client, Store], caplog: pytest.LogCaptureFixture, bad: str
) -> None:
    """Fuzz finding: compare_digest on a non-ASCII str raised TypeError (500, a traceback)."""
    client, store = site
    caplog.set_level(logging.ERROR)
    await client.get("/login")  # the pre-login cookie the token is checked against
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    raw = f"account=alice&password={PASSWORD}&csrf={bad}".encode()
    resp = await client.post("/login", data=raw, allow_redirects=False, headers=form)
    assert resp.status == 403, await resp.text()
    # Bytes that are not UTF-8 at all: a 400 before any check.
    resp = await client.post("/login", data=raw + b"\xff\xfe", headers=form)
    assert resp.status == 400, await resp.text()
    # A pre-login cookie that is not ASCII (ours are token_urlsafe) is refused the same way.
    client.session.cookie_jar.update_cookies({"handoff_login": "é\udcff"})
    resp = await client.post("/login", data={"account": "alice", "csrf": bad})
    assert resp.status == 403
    # And the logged-in forms.
    csrf = await _login(client)
    device = store.list_devices(store.resolve_account("alice").account_id)[0]
    resp = await client.post(
        f"/devices/{device.device_id}/rename", data={"name": "x", "csrf": csrf + bad},
        allow_redirects=False,
    )  # fmt: skip
    assert resp.status == 403
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
