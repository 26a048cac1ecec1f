"""The web pages' layout in Debian's Chromium (Playwright) at 1280 and 390 px wide.

Screenshots of each page at both widths, then facts about them: no horizontal scroll, the
pairing code visible without scrolling, the account name in the header, device ids shortened
with the full id on demand, revoked devices collapsed, times shown in the browser's zone (the
static script runs under the strict CSP), and no CSP violation reported by the browser.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from playwright.sync_api import ConsoleMessage, Page, sync_playwright

from handoffd import identity
from handoffd.serverlink import JoinResult, ServerClient, parse_invite
from tests.server.helpers import ServerProcess, cli
from tests.server.test_browser import ARGS, CHROMIUM

PASSWORD = "correct horse battery staple"
LONG_NAME = "kitchen-tablet-" + "x" * 49  # 64 characters, no space to break at
WIDTHS = {"desktop": (1280, 800), "phone": (390, 844)}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data").start()
    password = tmp_path / "pw"
    password.write_text(PASSWORD + "\n")
    cli(proc.data, "account", "create", "alice", "--password-file", str(password))
    try:
        yield proc
    finally:
        proc.stop()


def _join(server: ServerProcess, name: str) -> JoinResult:
    out = cli(server.data, "invite", "alice", "--no-qr").stdout
    url = next(line.split()[-1] for line in out.splitlines() if line.startswith("url:"))

    async def join() -> JoinResult:
        invite = parse_invite(url)
        client = ServerClient(invite.server_url, fingerprint=invite.fingerprint)
        try:
            key = identity.generate_device_key()
            return await client.join(invite, key=key, name=name, platform="linux")
        finally:
            await client.close()

    # Playwright's sync API owns this thread's event loop: join from another thread.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, join()).result(timeout=60)


def _console_error(problems: list[str], message: ConsoleMessage) -> None:
    if message.type == "error":
        problems.append(message.text)


def _no_horizontal_scroll(page: Page) -> None:
    sizes = page.evaluate(
        "() => [document.documentElement.scrollWidth, window.innerWidth, document.body.scrollWidth]"
    )
    assert sizes[0] <= sizes[1], sizes
    assert sizes[2] <= sizes[1], sizes


def _fully_in_view(page: Page, selector: str) -> None:
    box = page.locator(selector).bounding_box()
    size = page.viewport_size
    assert box is not None, selector
    assert size is not None
    assert box["x"] >= 0, box
    assert box["y"] >= 0, box
    assert box["x"] + box["width"] <= size["width"], (box, size)
    assert box["y"] + box["height"] <= size["height"], (box, size)


def test_pages_at_desktop_and_phone_widths(server: ServerProcess, tmp_path: Path) -> None:
    assert Path(CHROMIUM).exists(), "needs Debian's chromium (apt-get install chromium)"
    kept = _join(server, LONG_NAME)
    gone = _join(server, "old-phone")
    base = server.url
    shots = tmp_path / "shots"
    shots.mkdir()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            for label, (width, height) in WIDTHS.items():
                context = browser.new_context(
                    ignore_https_errors=True,
                    viewport={"width": width, "height": height},
                    timezone_id="Asia/Tokyo",  # UTC+9: local times differ from UTC
                    locale="en-GB",
                )
                page = context.new_page()
                problems: list[str] = []
                page.on("console", functools.partial(_console_error, problems))
                page.on("pageerror", lambda e: problems.append(str(e)))  # noqa: B023
                page.goto(f"{base}/login")
                _no_horizontal_scroll(page)
                page.screenshot(path=str(shots / f"login-{label}.png"), full_page=True)
                page.fill("input[name=account]", "alice")
                page.fill("input[name=password]", PASSWORD)
                page.click("button:has-text('Log in')")
                assert page.url.endswith("/devices")
                if label == "desktop":  # revoke one device through the page, once
                    card = page.locator("li.device", has_text="old-phone")
                    card.locator("button:has-text('Revoke')").click()
                    page.click("text=Yes, revoke it")
                    assert page.url.endswith("/devices")

                # The header: product and account name, on screen.
                assert page.inner_text("header .product") == "handoff"
                assert page.inner_text("header .account") == "alice"
                _fully_in_view(page, "header .account")
                # Devices: the id short on screen, the full one on demand.
                card = page.locator("ul.devices > li.device").first
                devid = card.locator("code.devid")
                full = identity.format_device_id(kept.device_id)
                assert devid.get_attribute("title") == full
                assert len(devid.inner_text()) <= 10
                assert not card.locator(".fullid").is_visible()
                card.locator("details.more summary").click()
                assert card.locator(".fullid").inner_text() == full
                assert card.locator("input[name=name]").is_visible()
                # The revoked one: collapsed under its summary.
                revoked = page.locator("details.revoked-list")
                assert "Revoked devices (1)" in revoked.locator("> summary").inner_text()
                assert not revoked.locator("li.device").is_visible()
                assert not page.locator("ul.devices li", has_text="old-phone").first.is_visible()
                # Times: the script made them local (Tokyo), the UTC text kept as the title.
                time_el = card.locator("time").first
                assert time_el.get_attribute("title", timeout=5000) is not None
                assert "UTC" in (time_el.get_attribute("title") or "")
                assert "UTC" not in time_el.inner_text()
                _no_horizontal_scroll(page)
                page.screenshot(path=str(shots / f"devices-{label}.png"), full_page=True)

                page.goto(f"{base}/add-device")
                _fully_in_view(page, ".code")  # the code, without scrolling
                _no_horizontal_scroll(page)
                command = page.inner_text("pre.command")
                assert command.startswith(f"handoff pair {page.inner_text('.code')}-")
                assert "@127.0.0.1:" in command  # the pin tag and the server: one word to type
                page.screenshot(path=str(shots / f"add-device-{label}.png"), full_page=True)

                page.goto(f"{base}/account")
                _no_horizontal_scroll(page)
                assert page.locator("input[name=new]").is_visible()
                page.screenshot(path=str(shots / f"account-{label}.png"), full_page=True)
                assert problems == []  # no CSP report, no script error
                context.close()
        finally:
            browser.close()
    assert gone.device_id != kept.device_id
    assert len(list(shots.glob("*.png"))) == 8
