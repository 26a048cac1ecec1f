"""Debian's Chromium driven by Playwright (no browser download), and the `handoff` CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
    # The tests' server is self-signed: the page registers its service worker (sw.js) only
    # if the script loads without a TLS error, which ignore_https_errors does not give.
    "--ignore-certificate-errors",
]  # fmt: skip
TIMEOUT_MS = 60_000


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Debian Chromium (fails with what to install when it is missing)."""
    assert Path(CHROMIUM).exists(), "needs Debian's chromium (apt-get install chromium)"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Browser) -> tuple[BrowserContext, Page]:
    """A fresh context (its own IndexedDB: a separate browser device) and a page that logs errors."""
    context = browser.new_context(ignore_https_errors=True)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.errors = errors  # type: ignore[attr-defined]
    return context, page


def pair_browser(page: Page, invite_url: str, name: str) -> str:
    """Open the invite's page URL, pair under ``name``; the browser's device id."""
    page.goto(invite_url)
    page.wait_for_selector("#pair:not([hidden])")
    page.fill("#pair-name", name)
    page.click("#pair-button")
    page.wait_for_selector("body[data-state=online]")
    assert page.url.endswith("/app/"), page.url  # the token is out of the address bar
    return page.inner_text("#device-id").replace("-", "")


def handoff(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `handoff` CLI against the daemon at ``home``."""
    return subprocess.run(
        [sys.executable, "-m", "handoffd.cli", "--home", str(home), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def devices(home: Path) -> dict[str, dict[str, Any]]:
    """`handoff devices --json`, by device id."""
    done = handoff(home, "devices", "--json")
    assert done.returncode == 0, done.stderr
    return {d["device_id"]: d for d in json.loads(done.stdout)["devices"]}
