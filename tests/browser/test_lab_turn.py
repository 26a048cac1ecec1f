"""TURN for a browser device: UDP blocked between Chromium and the daemon, in the network lab.

Three lab hosts: h0 runs handoff-server (configured with a real coturn's STUN/TURN
URLs and its secret) and coturn; h1 runs the "laptop" daemon; h2 runs Debian's
Chromium (Playwright starts it inside h2's namespace). With UDP between h1 and h2
dropped both ways, the daemon hands a document to the page: both ends took their
TURN credentials from ``/v1/ice``, coturn logged an allocation for each device, the
bytes crossed h0, and the page verified the SHA-256 (DTLS end to end through TURN).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from pathlib import Path

import pytest

from handoffd.wire.invite import page_url, parse_invite
from tests.browser.helpers import ARGS, CHROMIUM, devices, handoff
from tests.browser.test_receive import _send, _state
from tests.handoff.labkit import LabDaemon, LabServer
from tests.lab import Host, Lab
from tests.lab.coturn import start_coturn
from tests.lab.fixtures import LabFactory
from tests.server.helpers import cli_invite, create_account
from tests.support.waiting import until

pytestmark = pytest.mark.timeout(600)  # a real browser, daemons and a server on a shared machine

SIZE = 3 * 1024 * 1024


def _rx_bytes(host: Host) -> int:
    stats = json.loads(host.run(["ip", "-j", "-s", "link", "show", "eth0"]).stdout)
    return int(stats[0]["stats64"]["rx"]["bytes"])


def _chromium_in(host: Host, where: Path) -> Path:
    """An executable that starts Debian's Chromium inside ``host`` (for Playwright)."""
    script = where / "chromium-in-lab"
    script.write_text(f'#!/bin/sh\nexec {" ".join(host.argv([CHROMIUM]))} "$@"\n')
    script.chmod(0o755)
    return script


@pytest.mark.lab
def test_udp_blocked_between_browser_and_daemon_goes_through_turn(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    lab: Lab = lab_factory(3)
    h0, h1, h2 = lab.hosts
    secret = secrets.token_hex(32)
    coturn = start_coturn(h0, secret=secret, workdir=tmp_path / "coturn")
    secret_file = tmp_path / "turn-secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    server = LabServer(
        tmp_path / "srv",
        host=h0,
        extra=("--stun", coturn.stun_url, "--turn", coturn.turn_url,
               "--turn-secret-file", str(secret_file), "--turn-ttl", "600"),
    )  # fmt: skip
    home = tmp_path / "a"
    home.mkdir(mode=0o700)
    laptop = LabDaemon(home, host=h1)
    try:
        server.start()
        create_account(server.data, "hal")
        laptop.start()
        assert (
            handoff(home, "pair", cli_invite(server.data, "hal")[0], "--name", "laptop").returncode
            == 0
        )
        lab.block_udp(h1, h2)
        lab.block_udp(h2, h1)
        doc = tmp_path / "doc.bin"
        data = secrets.token_bytes(SIZE)
        doc.write_bytes(data)
        invite = parse_invite(cli_invite(server.data, "hal")[0])
        assert invite.token is not None

        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(_chromium_in(h2, tmp_path)), args=ARGS, headless=True
            )
            try:
                context = browser.new_context(ignore_https_errors=True)
                context.set_default_timeout(120_000)
                tab = context.new_page()
                tab.goto(page_url(server.url, invite.token, server.fingerprint))
                tab.fill("#pair-name", "phone")
                tab.click("#pair-button")
                tab.wait_for_selector("body[data-state=online]")
                phone = tab.inner_text("#device-id").replace("-", "")
                until(lambda: devices(home).get(phone, {}).get("online"), "the browser online", 120)

                rx_before = _rx_bytes(h0)
                hid = _send(laptop, "phone", doc, "Through TURN")
                tab.click(f"article[data-handoff='{hid}'] button.accept")
                tab.wait_for_selector(f"article[data-handoff='{hid}'][data-state=delivered]")
                done = until(
                    lambda: (s := _state(laptop, hid))["state"] == "delivered" and s, "delivered"
                )
                assert done["path"] == "direct"  # WebRTC (relayed by TURN), not the server's relay
                assert _rx_bytes(h0) - rx_before >= SIZE  # the bytes crossed h0 (coturn)
                log = coturn.log_text()
                for device in (phone, laptop_id(home)):
                    allocated = rf"user <\d+:{device}>: incoming packet ALLOCATE processed, success"
                    assert re.search(allocated, log), (device, log[-3000:])
                with tab.expect_download() as got:
                    tab.click(f"article[data-handoff='{hid}'] a.download")
                saved = tmp_path / "downloaded.bin"
                got.value.save_as(saved)
                assert hashlib.sha256(saved.read_bytes()).digest() == hashlib.sha256(data).digest()
            finally:
                browser.close()
    finally:
        laptop.kill()
        server.stop()
        coturn.stop()


def laptop_id(home: Path) -> str:
    return next(i for i, d in devices(home).items() if d["name"] == "laptop")
