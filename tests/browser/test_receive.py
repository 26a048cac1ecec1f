"""A real daemon hands a session to a browser device over WebRTC, and it is resumed there.

Real server, real daemon, Debian's Chromium: the daemon's signed offer reaches the page
through the server's WebSocket, the page answers with its own signed answer (fingerprint-only
binding), both confirm on the data channel, and the transfer protocol runs in the page:
Accept first, per-item SHA-256, delivered, Resume → the source sees ``resumed``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from handoffd.wire.invite import page_url, parse_invite
from tests.browser.helpers import chromium, devices, handoff, new_page, pair_browser
from tests.server.helpers import cli_invite, create_account
from tests.support.processes import DaemonProcess, ServerProcess
from tests.support.waiting import until

pytestmark = pytest.mark.timeout(600)  # a real browser, daemons and a server on a shared machine

MIB = 1024 * 1024
# Records what the page shows with the Notification API (the permission is granted).
NOTIFICATIONS = """
window.notified = [];
window.Notification = class extends window.Notification {
  constructor(title, options) { super(title, options); window.notified.push(options.body); }
};
"""


def _page_invite(server: ServerProcess, account: str) -> str:
    invite = parse_invite(cli_invite(server.data, account)[0])
    assert invite.token is not None
    return page_url(server.url, invite.token, server.fingerprint)


def _state(d: DaemonProcess, handoff_id: str) -> dict[str, Any]:
    status, body = d.curl("GET", f"/v1/handoffs/{handoff_id}")
    assert status == 200, body
    return dict(body)


def _send(d: DaemonProcess, target: str, doc: Path, title: str) -> str:
    status, session = d.curl(
        "POST",
        "/v1/sessions",
        {
            "app_id": "org.example.notes",
            "title": title,
            "context": {"cursor": 42},
            "items": [
                {"type": "message", "name": "note.txt", "text": "Pick this up on the phone"},
                {"type": "document", "name": doc.name, "path": str(doc)},
            ],
        },
    )
    assert status == 201, session
    status, h = d.curl("POST", "/v1/handoffs", {"session_id": session["id"], "target": target})
    assert status in (200, 201, 202), h
    return str(h["id"])


def test_daemon_hands_a_session_to_the_browser_which_resumes_it(
    server: ServerProcess, daemons: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    create_account(server.data, "dee")
    laptop = daemons("a").start()
    url, _ = cli_invite(server.data, "dee")
    assert handoff(laptop.home, "pair", url, "--name", "laptop").returncode == 0
    doc = tmp_path / "plan.bin"
    data = hashlib.sha256(b"seed").digest() * (10 * MIB // 32)
    doc.write_bytes(data)

    with chromium() as browser:
        context, tab = new_page(browser)
        context.grant_permissions(["notifications"])
        tab.add_init_script(NOTIFICATIONS)
        phone = pair_browser(tab, _page_invite(server, "dee"), "phone")
        until(lambda: devices(laptop.home).get(phone, {}).get("online"), "the browser online")

        hid = _send(laptop, "phone", doc, "Trip plan")
        card = tab.wait_for_selector(f"article[data-handoff='{hid}'][data-state=offered]")
        assert card is not None
        assert "Trip plan" in card.inner_text()
        assert "from laptop" in card.inner_text()
        assert tab.evaluate("window.notified") == ["Trip plan — from laptop"]
        tab.click(f"article[data-handoff='{hid}'] button.accept")
        tab.wait_for_selector(f"article[data-handoff='{hid}'][data-state=delivered]")
        assert until(lambda: _state(laptop, hid)["state"] == "delivered" or None, "delivered")

        # What arrived: the message shown, the document intact (downloaded from the page).
        card_text = tab.inner_text(f"article[data-handoff='{hid}']")
        assert "Pick this up on the phone" in card_text
        assert '"cursor":42' in card_text
        with tab.expect_download() as got:
            tab.click(f"article[data-handoff='{hid}'] a.download")
        saved = tmp_path / "downloaded.bin"
        got.value.save_as(saved)
        assert hashlib.sha256(saved.read_bytes()).digest() == hashlib.sha256(data).digest()

        tab.click(f"article[data-handoff='{hid}'] button.resume")
        tab.wait_for_selector(f"article[data-handoff='{hid}'][data-state=resumed]")
        final = until(lambda: (s := _state(laptop, hid))["state"] == "resumed" and s, "resumed")
        assert final["path"] == "direct"
        assert tab.errors == [], tab.errors  # type: ignore[attr-defined]
        context.close()


def test_page_reloaded_mid_transfer_resumes_without_resending_what_it_acknowledged(
    server: ServerProcess, daemons: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    create_account(server.data, "eve")
    laptop = daemons("a").start()
    url, _ = cli_invite(server.data, "eve")
    assert handoff(laptop.home, "pair", url, "--name", "laptop").returncode == 0
    size = 40 * MIB
    doc = tmp_path / "big.bin"
    data = hashlib.sha256(b"big").digest() * (size // 32)
    doc.write_bytes(data)

    with chromium() as browser:
        context, tab = new_page(browser)
        phone = pair_browser(tab, _page_invite(server, "eve"), "phone")
        until(lambda: devices(laptop.home).get(phone, {}).get("online"), "the browser online")
        hid = _send(laptop, "phone", doc, "Big one")
        tab.click(f"article[data-handoff='{hid}'] button.accept")
        acked = until(
            lambda: (n := _state(laptop, hid)["bytes_done"]) >= 4 * MIB and n, "4 MiB acknowledged"
        )
        assert acked < size
        tab.reload()  # the page (and its data channel) is gone mid-transfer
        tab.wait_for_selector("body[data-state=online]")
        # Not asked again: the checkpoints in IndexedDB say it was accepted.
        tab.wait_for_selector(
            f"article[data-handoff='{hid}'][data-state=delivered]", timeout=240_000
        )
        done = until(lambda: (s := _state(laptop, hid))["state"] == "delivered" and s, "delivered")
        assert done["attempts"] >= 2
        wire = done["wire"]
        assert wire["bytes_already_held"] >= acked
        # The last attempt sent only what the page did not hold durably: nothing acknowledged twice.
        assert wire["data_bytes_sent"] == done["bytes_total"] - wire["bytes_already_held"]
        assert done["bytes_total"] > size
        with tab.expect_download() as got:
            tab.click(f"article[data-handoff='{hid}'] a.download")
        saved = tmp_path / "downloaded.bin"
        got.value.save_as(saved)
        assert hashlib.sha256(saved.read_bytes()).digest() == hashlib.sha256(data).digest()
        context.close()
