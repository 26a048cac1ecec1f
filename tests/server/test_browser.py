"""The web pages in a real browser (Debian's Chromium driven by Playwright).

Log in, open "Add a device", take a screenshot, decode the QR in it (zbarimg)
to the invite URL, join with it, see the device listed, revoke it in the page.
Needs Debian's ``chromium`` and ``zbar-tools`` and the ``playwright`` package
(no browser download: Playwright drives /usr/bin/chromium).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from playwright.sync_api import sync_playwright

from handoffd import identity
from handoffd.serverlink import JoinResult, ServerClient, parse_invite
from tests.server.helpers import ServerProcess, cli

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ZBARIMG = shutil.which("zbarimg")
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip


@pytest.fixture
def web_server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data").start()
    password = tmp_path / "pw"
    password.write_text("correct horse battery staple\n")
    cli(proc.data, "account", "create", "alice", "--password-file", str(password))
    try:
        yield proc
    finally:
        proc.stop()


def _decode_qr(png: Path) -> str:
    assert ZBARIMG is not None
    done = subprocess.run(
        [ZBARIMG, "--raw", "-q", str(png)], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_login_add_device_scan_join_revoke(web_server: ServerProcess, tmp_path: Path) -> None:
    # Not skipped when missing (CI counts skips as failures): say what to install.
    assert Path(CHROMIUM).exists(), "needs Debian's chromium (apt-get install chromium)"
    assert ZBARIMG is not None, "needs zbarimg (apt-get install zbar-tools)"
    base = web_server.url
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_context(ignore_https_errors=True).new_page()
            page.goto(f"{base}/login")
            page.fill("input[name=account]", "alice")
            page.fill("input[name=password]", "wrong")
            page.click("button")
            assert "Wrong account name or password" in page.content()
            page.fill("input[name=account]", "alice")
            page.fill("input[name=password]", "correct horse battery staple")
            page.click("button")
            assert page.url.endswith("/devices")
            cookie = next(c for c in page.context.cookies() if c["name"] == "handoff_session")
            assert cookie["httpOnly"]
            assert cookie["secure"]
            assert cookie["sameSite"] == "Strict"

            page.goto(f"{base}/add-device")
            shot = tmp_path / "add-device.png"
            page.screenshot(path=str(shot), full_page=True)
            url = _decode_qr(shot)
            assert url.startswith(f"{base}/pair#token=")  # a phone's camera opens the pairing page
            invite = parse_invite(url)
            assert invite.server_url == base
            assert invite.fingerprint == web_server.fingerprint
            code_text = page.inner_text(".code")
            assert len(code_text.replace("-", "")) >= 8

            key = identity.generate_device_key()
            # Playwright's sync API owns this thread's event loop: join from another thread.
            with ThreadPoolExecutor(1) as pool:
                joined = pool.submit(asyncio.run, _join(url, key)).result(timeout=60)
            identity.verify_device_cert(
                joined.device_cert, identity.TrustAnchor.from_ca(joined.account_ca),
                now=dt.datetime.now(dt.UTC),
            )  # fmt: skip

            page.goto(f"{base}/devices")
            assert "phone" in page.content()
            assert identity.format_device_id(joined.device_id) in page.content()

            # CSRF: a form posted without the session's token, or with a wrong one, is refused.
            forms: list[dict[str, str | float | bool]] = [
                {"confirm": "yes"},
                {"confirm": "yes", "csrf": "nope"},
            ]
            for form in forms:
                forged = page.request.post(f"{base}/devices/{joined.device_id}/revoke", form=form)
                assert forged.status == 403
            page.goto(f"{base}/devices")
            assert "revoked" not in page.inner_text("ul.devices")

            page.screenshot(path=str(tmp_path / "devices-before.png"), full_page=True)
            page.click("button:has-text('Revoke')")
            assert "Yes, revoke it" in page.content()
            assert "revoked" not in page.inner_text("body")
            page.click("text=Yes, revoke it")
            assert page.url.endswith("/devices")
            assert "Revoked devices (1)" in page.inner_text("details.revoked-list summary")
            page.screenshot(path=str(tmp_path / "devices.png"), full_page=True)
            headers = page.request.get(f"{base}/devices").headers
            assert "frame-ancestors 'none'" in headers["content-security-policy"]
        finally:
            browser.close()
    # The invite token never reaches the server's log.
    assert invite.token is not None
    log = web_server.log.read_text()
    assert "/add-device" in log
    assert invite.token not in log


async def _join(url: str, key: Ed25519PrivateKey) -> JoinResult:
    invite = parse_invite(url)
    client = ServerClient(invite.server_url, fingerprint=invite.fingerprint)
    try:
        return await client.join(invite, key=key, name="phone", platform="test")
    finally:
        await client.close()
