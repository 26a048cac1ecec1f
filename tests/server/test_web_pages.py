"""The web pages' content in-process: header, device cards, revoked list, times, password change,
static files."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from handoffd import identity
from handoffd.server.store import Store
from handoffd.server.webview import make_environment, short_id
from tests.server.test_web import PASSWORD, _assert_headers, _csrf, _login, _post_login
from tests.server.test_web import site as site  # the fixture

Client = TestClient[web.Request, web.Application]


@pytest.mark.asyncio
async def test_header_cards_revoked_list_and_times(site: tuple[Client, Store]) -> None:
    client, store = site
    csrf = await _login(client)
    account = store.resolve_account("alice")
    phone = store.list_devices(account.account_id)[0]
    page = await (await client.get("/devices")).text()
    header = re.search(r"<header.*?</header>", page, re.S)
    assert header is not None
    assert ">handoff<" in header.group(0)
    assert '<span class="account"' in header.group(0)
    assert ">alice<" in header.group(0)
    # The id: shortened, with the full id on demand (title, and in the card's details).
    full = identity.format_device_id(phone.device_id)
    assert f'title="{full}">{short_id(phone.device_id)}<' in page
    assert len(short_id(phone.device_id)) <= 10
    assert re.search(r"<details class=\"more\">.*?" + re.escape(full), page, re.S)
    # One rename box per device, inside its collapsed details, not on the row.
    assert page.count('name="name"') == 1
    assert re.search(r"<details class=\"more\">(?:(?!</details>).)*name=\"name\"", page, re.S)
    # Times: ISO in <time datetime>, UTC text until the script makes them local.
    assert re.search(r'<time datetime="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ">[^<]+ UTC</time>', page)
    assert "revoked-list" not in page
    resp = await client.post(
        f"/devices/{phone.device_id}/revoke", data={"csrf": csrf, "confirm": "yes"},
        allow_redirects=False,
    )  # fmt: skip
    assert resp.status == 303
    page = await (await client.get("/devices")).text()
    collapsed = re.search(r'<details class="revoked-list">(.*?)</ul>\s*</details>', page, re.S)
    assert collapsed is not None, page
    assert "Revoked devices (1)" in collapsed.group(1)
    assert "phone" in collapsed.group(1)
    assert "No devices yet" in page  # no active device left
    assert f"/devices/{phone.device_id}/rename" not in page


@pytest.mark.asyncio
async def test_add_device_command_is_complete_and_in_one_template(
    site: tuple[Client, Store],
) -> None:
    client, _ = site
    await _login(client)
    page = await (await client.get("/add-device")).text()
    code = re.search(r'class="code">([0-9A-Z-]+)<', page)
    assert code is not None
    command = re.search(r'<pre class="command"><code>([^<]+)</code></pre>', page)
    assert command is not None
    # The code (a pin tag only with a TLS fingerprint) and the server: one word to type.
    pattern = rf"handoff pair {code.group(1)}(?:-[0-9A-Z]{{4}})?@http://{client.host}:{client.port}"
    assert re.fullmatch(pattern, command.group(1)), command.group(1)
    # The code comes before the QR code (visible first on a phone).
    assert page.index('class="code"') < page.index("<svg")
    env = make_environment()
    text = env.get_template("pair_command.html").render(
        view=SimpleNamespace(command="handoff pair ABCD-EFGH-JKLM-NPQR@h:8443")
    )
    assert "<code>handoff pair ABCD-EFGH-JKLM-NPQR@h:8443</code>" in text


@pytest.mark.asyncio
async def test_password_change(site: tuple[Client, Store]) -> None:
    client, store = site
    # Another browser on the same account (a second cookie jar on the same server).
    other: Client = TestClient(client.server)  # type: ignore[assignment]
    await other.start_server()
    try:
        await _login(other)
        csrf = await _login(client)
        page = await (await client.get("/account")).text()
        assert "Change the password" in page
        assert ">alice<" in page
        new = "a new password 42"
        cases = [
            ({"current": PASSWORD, "new": new, "repeat": new}, 403, None),  # no token
            ({"current": "wrong", "new": new, "repeat": new, "csrf": csrf}, 403, "wrong"),
            ({"current": PASSWORD, "new": new, "repeat": new + "x", "csrf": csrf}, 400, "differ"),
            ({"current": PASSWORD, "new": "short", "repeat": "short", "csrf": csrf}, 400, "8 to"),
        ]
        for form, status, text in cases:
            resp = await client.post("/account/password", data=form)
            assert resp.status == status, form
            if text:
                assert text in await resp.text()
        assert store.check_login("alice", PASSWORD) is not None
        assert (await other.get("/devices", allow_redirects=False)).status == 200
        resp = await client.post(
            "/account/password",
            data={"current": PASSWORD, "new": new, "repeat": new, "csrf": csrf},
        )
        assert resp.status == 200
        assert "The password was changed" in await resp.text()
        assert store.check_login("alice", PASSWORD) is None
        assert store.check_login("alice", new) is not None
        # This browser stays logged in; the other one is logged out.
        assert (await client.get("/devices", allow_redirects=False)).status == 200
        assert (await other.get("/devices", allow_redirects=False)).status == 303
    finally:
        await other.close()


@pytest.mark.asyncio
async def test_wrong_current_passwords_are_rate_limited(site: tuple[Client, Store]) -> None:
    client, store = site
    csrf = await _login(client)
    form = {"current": "wrong", "new": "a new password 42", "repeat": "a new password 42"}
    statuses = [
        (await client.post("/account/password", data={**form, "csrf": csrf})).status
        for _ in range(6)
    ]
    assert statuses[0] == 403
    assert statuses[-1] == 429
    assert store.check_login("alice", PASSWORD) is not None
    await client.post("/logout", data={"csrf": csrf})
    status, _ = await _post_login(client, PASSWORD)  # the name's bucket is the login's
    assert status == 429


@pytest.mark.asyncio
async def test_static_files_have_the_headers_and_stay_in_their_folder(
    site: tuple[Client, Store],
) -> None:
    client, _ = site
    page = await (await client.get("/login")).text()
    _csrf(page)
    for path, kind in (("/static/style.css", "text/css"), ("/static/localtime.js", "javascript")):
        assert path in page
        resp = await client.get(path)
        assert resp.status == 200, path
        assert kind in resp.headers["Content-Type"]
        _assert_headers(resp)
    js = await (await client.get("/static/localtime.js")).text()
    assert "time[datetime]" in js
    for bad in ("/static/../web.py", "/static/%2e%2e/web.py", "/static/templates/base.html"):
        resp = await client.get(bad)
        assert resp.status in (403, 404), bad
