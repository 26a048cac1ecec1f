"""Files shared to the installed app ("Share → Handoff") reach a real daemon intact.

The manifest's share target POSTs multipart/form-data to /app/share; the page's
service worker (sw.js) takes that request in the browser, keeps the files in
IndexedDB and opens the send view with them chosen; the server never receives
them. Without the worker the server answers a page saying so and reads nothing.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.browser.helpers import chromium, devices, handoff, new_page, pair_browser
from tests.browser.test_receive import _page_invite
from tests.browser.test_send import _inbox
from tests.server.helpers import cli_invite, create_account
from tests.support.processes import DaemonProcess, ServerProcess
from tests.support.waiting import until

pytestmark = pytest.mark.timeout(600)  # a real browser, daemons and a server on a shared machine

MIB = 1024 * 1024

# What the share sheet does: a POST navigation of multipart/form-data to the share action
# (a form built in the page, its file input given the file, submitted).
SHARE = """([name, b64]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const form = document.createElement("form");
  form.method = "post";
  form.enctype = "multipart/form-data";
  form.action = "/app/share";
  const input = document.createElement("input");
  input.type = "file";
  input.name = "files";
  const box = new DataTransfer();
  box.items.add(new File([bytes], name, { type: "application/pdf" }));
  input.files = box.files;
  const text = document.createElement("input");
  text.name = "text";
  text.value = "The contract";
  form.append(input, text);
  document.body.append(form);
  form.submit();
}"""


def test_files_shared_to_the_app_are_sent_to_a_daemon(
    server: ServerProcess, daemons: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    create_account(server.data, "gil")
    laptop = daemons("a").start()
    url, _ = cli_invite(server.data, "gil")
    assert handoff(laptop.home, "pair", url, "--name", "laptop").returncode == 0
    data = hashlib.sha256(b"contract").digest() * (MIB // 32) + b"tail"

    with chromium() as browser:
        context, tab = new_page(browser)

        # No worker yet: the server answers a page that says so, and reads nothing.
        refused = tab.request.post(
            f"{server.url}/app/share", multipart={"text": "x", "files": {
                "name": "a.bin", "mimeType": "application/octet-stream", "buffer": b"z" * 4096}},
        )  # fmt: skip
        assert refused.status == 409
        assert "did not reach Handoff" in refused.text()
        assert "never receives them" in refused.text()

        phone = pair_browser(tab, _page_invite(server, "gil"), "phone")
        laptop_id = until(
            lambda: next(
                (i for i, d in devices(laptop.home).items() if d["name"] == "laptop"), None
            ),
            "the laptop listed",
        )
        until(lambda: devices(laptop.home).get(phone, {}).get("online"), "the browser online")
        manifest = tab.request.get(f"{server.url}/app/manifest.webmanifest").json()
        target = manifest["share_target"]
        assert (target["action"], target["method"], target["enctype"]) == (
            "/app/share",
            "POST",
            "multipart/form-data",
        )
        assert target["params"]["files"] == [{"name": "files", "accept": ["*/*"]}]
        # The page registered sw.js (scope /app/); this page itself opened at /pair.
        tab.wait_for_function(
            "navigator.serviceWorker.getRegistration('/app/')"
            ".then((r) => r?.active?.state === 'activated')"
        )
        # The share is a navigation to /app/share: the worker whose scope holds that URL
        # takes it, whichever page (if any) submitted it.

        tab.evaluate(SHARE, ["contract.pdf", base64.b64encode(data).decode()])
        tab.wait_for_selector("#send[data-state=shared]")
        assert tab.url.endswith("/app/")
        assert tab.inner_text("#send-shared") == f"contract.pdf · {len(data)} bytes"
        assert tab.input_value("#send-text") == "The contract"
        # The server saw one POST to /app/share: the one above, before the worker.
        assert server.log.read_text().count("method=POST path=/app/share ") == 1

        tab.wait_for_selector("body[data-state=online]")
        tab.wait_for_selector(
            f"#send-to option[value='{laptop_id}']:not([disabled])", state="attached"
        )
        tab.select_option("#send-to", laptop_id)
        tab.click("#send-button")
        tab.wait_for_selector("#send[data-state=delivered]")
        hid = tab.get_attribute("#send", "data-handoff")
        assert hid is not None
        entry = until(lambda: _inbox(laptop, hid), "in the laptop's inbox")
        assert entry["from"] == {"device_id": phone, "name": "phone"}
        by_name = {i["name"]: i for i in entry["items"]}
        assert set(by_name) == {"contract.pdf", "message.txt"}
        received = Path(by_name["contract.pdf"]["path"]).read_bytes()
        assert hashlib.sha256(received).hexdigest() == hashlib.sha256(data).hexdigest()
        status, body = laptop.curl("POST", f"/v1/inbox/{hid}/resumed", {})
        assert status == 200, body
        tab.wait_for_selector("#send[data-state=resumed]")
        assert tab.inner_text("#send-shared") == ""  # sent: no longer chosen
        assert tab.errors == [], tab.errors  # type: ignore[attr-defined]
        context.close()


def test_a_share_posted_to_the_server_is_refused_unread(server: ServerProcess) -> None:
    """A share that no worker took: the server answers before the body, then closes."""
    host, port = server.url.removeprefix("https://").split(":")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only this check: the page is not what is tested
    raw = socket.create_connection((host, int(port)), timeout=60)
    with context.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(
            b"POST /app/share HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 1073741824\r\n\r\n--b\r\n"
        )  # announces 1 GiB, sends a few bytes: an answer means the body was not awaited
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    head, _, page = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 409"), head
    assert b"Connection: close" in head
    assert b"server never receives them" in page.replace(b"\n", b" ")
