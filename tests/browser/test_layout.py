"""The page at 390 px (a phone): the receive and send views, screenshots and layout facts.

Nothing may stick out of the viewport or make it scroll sideways, with a long title,
long names and a long unbroken link in a real handoff from a real daemon.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Page

from tests.browser.helpers import chromium, devices, handoff, pair_browser
from tests.browser.test_receive import _page_invite, _state
from tests.server.helpers import cli_invite, create_account
from tests.support.processes import DaemonProcess, ServerProcess
from tests.support.waiting import until

pytestmark = pytest.mark.timeout(600)  # a real browser, daemons and a server on a shared machine

WIDTH = 390
OVERFLOW = """() => {
  const w = document.documentElement.clientWidth;
  const out = [];
  for (const e of document.querySelectorAll("body *")) {
    const r = e.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;
    if (r.left < -0.5 || r.right > w + 0.5) out.push(`${e.tagName}.${e.className} ${r.left}..${r.right}`);
  }
  return {scroll: document.documentElement.scrollWidth, width: w, out};
}"""


def _fits(page: Page, shot: Path) -> None:
    page.screenshot(path=str(shot), full_page=True)
    facts = page.evaluate(OVERFLOW)
    assert facts["width"] == WIDTH
    assert facts["scroll"] <= WIDTH, facts  # no horizontal scroll
    assert facts["out"] == [], facts  # nothing cut off at either side


def test_receive_and_send_views_fit_a_390px_phone(
    server: ServerProcess, daemons: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    create_account(server.data, "gus")
    laptop = daemons("a").start()
    url, _ = cli_invite(server.data, "gus")
    assert (
        handoff(laptop.home, "pair", url, "--name", "a-laptop-with-a-rather-long-name").returncode
        == 0
    )
    doc = tmp_path / ("quarterly-report-" + "x" * 80 + ".pdf")
    doc.write_bytes(b"%PDF-1.4\n" * 1000)
    link = "https://example.org/" + "a" * 300

    with chromium() as browser:
        context = browser.new_context(
            ignore_https_errors=True, viewport={"width": WIDTH, "height": 844}, is_mobile=True,
            has_touch=True, device_scale_factor=2,
        )  # fmt: skip
        context.set_default_timeout(60_000)
        tab = context.new_page()
        phone = pair_browser(tab, _page_invite(server, "gus"), "phone")
        until(lambda: devices(laptop.home).get(phone, {}).get("online"), "the browser online")
        status, session = laptop.curl(
            "POST",
            "/v1/sessions",
            {
                "app_id": "org.example.notes",
                "title": "A session title that goes on and on " * 4,
                "context": {"k": "v" * 200},
                "items": [
                    {"type": "message", "name": "note.txt", "text": "word " * 100 + "z" * 200},
                    {"type": "url", "name": "link.url", "text": link},
                    {"type": "document", "name": doc.name, "path": str(doc)},
                ],
            },
        )
        assert status == 201, session
        status, h = laptop.curl(
            "POST", "/v1/handoffs", {"session_id": session["id"], "target": "phone"}
        )
        assert status in (200, 201, 202), h
        hid = h["id"]
        tab.wait_for_selector(f"article[data-handoff='{hid}'][data-state=offered]")
        _fits(tab, tmp_path / "receive-offered.png")
        tab.click(f"article[data-handoff='{hid}'] button.accept")
        tab.wait_for_selector(f"article[data-handoff='{hid}'][data-state=delivered]")
        until(lambda: _state(laptop, hid)["state"] == "delivered" or None, "delivered")
        _fits(tab, tmp_path / "receive-delivered.png")

        tab.fill("#send-text", "y" * 500)
        tab.fill("#send-url", link)
        tab.locator("#send").scroll_into_view_if_needed()
        _fits(tab, tmp_path / "send.png")
        context.close()
