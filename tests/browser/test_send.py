"""The browser hands a file, text and a link back to a real daemon, intact.

The page calls the daemon through the server (its signed offer asks for the
fingerprint-only binding, which the daemon answers in kind), signs the manifest
with its device key, streams within the daemon's window; the daemon's inbox
holds every item with its SHA-256, and its "resumed" reaches the page.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.browser.helpers import chromium, devices, handoff, new_page, pair_browser
from tests.browser.test_receive import _page_invite
from tests.server.helpers import cli_invite, create_account
from tests.support.processes import DaemonProcess, ServerProcess
from tests.support.waiting import until

pytestmark = pytest.mark.timeout(600)  # a real browser, daemons and a server on a shared machine

MIB = 1024 * 1024


def _inbox(d: DaemonProcess, handoff_id: str) -> dict[str, Any] | None:
    status, body = d.curl("GET", f"/v1/inbox/{handoff_id}")
    return dict(body) if status == 200 else None


def test_browser_sends_files_text_and_a_link_to_a_daemon(
    server: ServerProcess, daemons: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    create_account(server.data, "fay")
    laptop = daemons("a").start()
    url, _ = cli_invite(server.data, "fay")
    assert handoff(laptop.home, "pair", url, "--name", "laptop").returncode == 0
    doc = tmp_path / "photo.jpg"
    data = hashlib.sha256(b"photo").digest() * (5 * MIB // 32)
    doc.write_bytes(data)

    with chromium() as browser:
        context, tab = new_page(browser)
        phone = pair_browser(tab, _page_invite(server, "fay"), "phone")
        laptop_id = until(
            lambda: next(
                (i for i, d in devices(laptop.home).items() if d["name"] == "laptop"), None
            ),
            "the laptop listed",
        )
        until(lambda: devices(laptop.home).get(phone, {}).get("online"), "the browser online")
        tab.wait_for_selector(
            f"#send-to option[value='{laptop_id}']:not([disabled])", state="attached"
        )
        tab.select_option("#send-to", laptop_id)
        tab.fill("#send-text", "From the phone\nsecond line")
        tab.fill("#send-url", "https://example.org/a?b=c")
        tab.set_input_files("#send-files", str(doc))
        tab.click("#send-button")
        tab.wait_for_selector("#send[data-state=delivered]")
        hid = tab.get_attribute("#send", "data-handoff")
        assert hid is not None
        assert tab.evaluate("document.getElementById('send-progress').value") == 5 * MIB + len(
            "From the phone\nsecond line" + "https://example.org/a?b=c"
        )

        entry = until(lambda: _inbox(laptop, hid), "in the laptop's inbox")
        assert entry["from"] == {"device_id": phone, "name": "phone"}
        assert entry["title"] == "From the phone"
        by_name = {i["name"]: i for i in entry["items"]}
        assert set(by_name) == {"message.txt", "link.url", "photo.jpg"}
        assert Path(by_name["photo.jpg"]["path"]).read_bytes() == data
        assert Path(by_name["message.txt"]["path"]).read_text() == "From the phone\nsecond line"
        assert Path(by_name["link.url"]["path"]).read_text() == "https://example.org/a?b=c"

        status, body = laptop.curl("POST", f"/v1/inbox/{hid}/resumed", {})
        assert status == 200, body
        tab.wait_for_selector("#send[data-state=resumed]")
        assert tab.errors == [], tab.errors  # type: ignore[attr-defined]

        # "Share → Handoff" from another app (the manifest's share target) fills the form in.
        manifest = tab.request.get(f"{server.url}/app/manifest.webmanifest").json()
        assert manifest["share_target"]["action"] == "/app/share"
        tab.goto(
            f"{server.url}/app/share?title=Recipe&text=Try%20this&url=https%3A%2F%2Fx.example%2Fr"
        )
        tab.wait_for_selector("#send[data-state=shared]")
        assert tab.input_value("#send-text") == "Recipe\nTry this"
        assert tab.input_value("#send-url") == "https://x.example/r"
        assert tab.url.endswith("/app/")
        context.close()
