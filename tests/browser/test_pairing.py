"""A browser pairs through the invite's page URL and is a device like any other.

Real server, real daemon, Debian's Chromium: the page makes its Ed25519 key with
WebCrypto, joins with a CSR, keeps the server WebSocket (challenge-response);
`handoff devices` on a daemon of the account lists it (platform browser, online);
renamed in the page, the daemon sees the name; revoked by the daemon: the page is cut off and says so.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest

from handoffd import identity
from handoffd.wire.invite import page_url, parse_invite
from tests.browser.helpers import chromium, devices, handoff, new_page, pair_browser
from tests.server.helpers import cli, create_account
from tests.support.processes import DaemonProcess, ServerProcess
from tests.support.waiting import until

pytestmark = pytest.mark.timeout(600)  # a real browser, daemons and a server on a shared machine


def _invite(server: ServerProcess, account: str) -> tuple[str, str]:
    """A fresh invite: (handoff:// URL, the browser page URL printed by `handoff-server invite`)."""
    out = cli(server.data, "invite", account, "--no-qr").stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    url, page = fields["url"].strip(), fields["page"].strip()
    invite = parse_invite(url)
    assert invite.token is not None
    assert page == page_url(server.url, invite.token, server.fingerprint)
    assert parse_invite(page) == invite  # `handoff pair` takes the page URL too
    return url, page


def test_browser_pairs_is_listed_renamed_and_revoked(
    server: ServerProcess, daemons: Callable[..., DaemonProcess]
) -> None:
    create_account(server.data, "bea")
    url, _ = _invite(server, "bea")
    laptop = daemons("a").start()
    assert handoff(laptop.home, "pair", url, "--name", "laptop").returncode == 0
    _, page = _invite(server, "bea")
    # The daemon's invite (`handoff invite`): its QR holds the page URL a phone's camera opens.
    status, body = laptop.curl("POST", "/v1/invites", {})
    assert status == 200, body
    assert body["page_url"].startswith(f"{server.url}/pair#token=")
    assert parse_invite(body["page_url"]) == parse_invite(body["url"])

    with chromium() as browser:
        context, tab = new_page(browser)
        browser_id = pair_browser(tab, page, "phone")
        headers = tab.request.get(f"{server.url}/app/").headers
        assert "script-src 'self';" in headers["content-security-policy"]
        assert "unsafe-inline" not in headers["content-security-policy"]

        # The server signed a certificate for the page's key, exactly as for a daemon.
        listing = until(
            lambda: (d := devices(laptop.home)).get(browser_id, {}).get("online") and d,
            "the browser online in `handoff devices`",
        )
        assert listing[browser_id]["name"] == "phone"
        assert listing[browser_id]["platform"] == "browser"
        assert listing[browser_id]["revoked"] is False
        cert_pem = tab.evaluate(
            "new Promise(r => { const q = indexedDB.open('handoff'); q.onsuccess = () =>"
            " { const g = q.result.transaction('device').objectStore('device').get('self');"
            " g.onsuccess = () => r(g.result.deviceCert); }; })"
        )
        ca_pem = tab.evaluate(
            "new Promise(r => { const q = indexedDB.open('handoff'); q.onsuccess = () =>"
            " { const g = q.result.transaction('device').objectStore('device').get('self');"
            " g.onsuccess = () => r([g.result.accountCa, g.result.privateKey.extractable]); }; })"
        )
        assert ca_pem[1] is False  # the private key cannot be exported
        cert = identity.load_cert(cert_pem.encode())
        anchor = identity.TrustAnchor.from_ca(identity.load_cert(ca_pem[0].encode()))
        assert (
            identity.verify_device_cert(cert, anchor, now=dt.datetime.now(dt.UTC)).device_id
            == browser_id
        )
        tab.wait_for_selector(f"li[data-device-id='{listing[browser_id]['device_id']}']")
        assert "laptop" in tab.inner_text("#devices")

        # The page reloaded is the same device (the key is in IndexedDB), online again.
        tab.reload()
        tab.wait_for_selector("body[data-state=online]")
        assert tab.inner_text("#device-id").replace("-", "") == browser_id

        # Renamed in the page (a signed PATCH, like any device's): the laptop sees it.
        tab.fill("#rename-name", "tablet")
        tab.click("#rename-form button")
        tab.wait_for_selector("#device-name:text('tablet')")
        until(lambda: devices(laptop.home)[browser_id]["name"] == "tablet", "renamed in the page")

        # Revoked from the laptop: the server cuts the page's WebSocket; it says so and stays off.
        revoked = handoff(laptop.home, "revoke", browser_id, "--yes")
        assert revoked.returncode == 0, revoked.stderr
        tab.wait_for_selector("body[data-state=revoked]")
        assert "revoked" in tab.inner_text("#device-state")
        assert not devices(laptop.home)[browser_id]["online"]
        assert tab.errors == [], tab.errors  # type: ignore[attr-defined]
        context.close()


def test_the_invite_page_refuses_a_used_token(server: ServerProcess) -> None:
    create_account(server.data, "cy")
    _, page = _invite(server, "cy")
    with chromium() as browser:
        _, first = new_page(browser)
        pair_browser(first, page, "one")
        _, second = new_page(browser)
        second.goto(page)
        second.click("#pair-button")
        second.wait_for_selector("#pair-error:text('invite-used')")
        assert second.evaluate("document.body.dataset.state") == "unpaired"
