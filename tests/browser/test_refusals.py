"""What a browser device refuses, and what is refused to it, end to end.

- Declined in the page (the daemons' ``ask`` policy mirrored): the source sees
  ``declined`` and nothing is kept.
- A browser of another account aims its send form at a daemon of this account:
  the server forwards nothing across accounts (``target-unavailable``); the
  daemon's inbox stays empty.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.browser.helpers import chromium, devices, handoff, new_page, pair_browser
from tests.browser.test_receive import _page_invite, _send, _state
from tests.server.helpers import cli_invite, create_account
from tests.support.processes import DaemonProcess, ServerProcess
from tests.support.waiting import until

pytestmark = pytest.mark.timeout(600)  # a real browser, daemons and a server on a shared machine


def test_declined_in_the_page_and_refused_across_accounts(
    server: ServerProcess, daemons: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    create_account(server.data, "ivy")
    create_account(server.data, "jon")
    laptop = daemons("a").start()
    assert (
        handoff(
            laptop.home, "pair", cli_invite(server.data, "ivy")[0], "--name", "laptop"
        ).returncode
        == 0
    )
    laptop_id = until(
        lambda: next((i for i, d in devices(laptop.home).items() if d["name"] == "laptop"), None),
        "the laptop listed",
    )
    doc = tmp_path / "doc.txt"
    doc.write_text("secret plan\n")

    with chromium() as browser:
        mine, tab = new_page(browser)
        phone = pair_browser(tab, _page_invite(server, "ivy"), "phone")
        until(lambda: devices(laptop.home).get(phone, {}).get("online"), "the browser online")
        hid = _send(laptop, "phone", doc, "Not now")
        tab.click(f"article[data-handoff='{hid}'] button.decline")
        tab.wait_for_selector(f"article[data-handoff='{hid}'][data-state=declined]")
        declined = until(
            lambda: (s := _state(laptop, hid))["state"] == "declined" and s, "declined"
        )
        assert "declined-by-user" in str(declined.get("error")), declined
        stored = tab.evaluate(
            "new Promise(r => { const q = indexedDB.open('handoff'); q.onsuccess = () =>"
            " { const g = q.result.transaction('chunks').objectStore('chunks').getAllKeys();"
            " g.onsuccess = () => r(g.result.length); }; })"
        )
        assert stored == 0  # nothing of a declined handoff is kept

        # Another account's browser points its send form at the laptop anyway.
        other, stranger = new_page(browser)
        pair_browser(stranger, _page_invite(server, "jon"), "stranger")
        stranger.evaluate(
            "id => { const s = document.getElementById('send-to'); s.append(new Option('x', id));"
            " s.value = id; }",
            laptop_id,
        )
        stranger.fill("#send-text", "let me in")
        stranger.click("#send-button")
        stranger.wait_for_selector("#send[data-state=failed]")
        assert "target-unavailable" in stranger.inner_text("#send-state")
        status, inbox = laptop.curl("GET", "/v1/inbox")
        assert status == 200
        assert inbox["inbox"] == []
        other.close()
        mine.close()
