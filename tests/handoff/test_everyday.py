"""Everyday handoff with real daemons: ``handoff send PATH… | --text | --url | --clipboard``,
the built-in receivers on the target, bad input refused on the sending side, ``--types``."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from handoffd.control.client import Item
from handoffd.errors import ApiError
from tests.handoff.helpers import Pair, paired_daemons, sha256_file, write_random
from tests.support.processes import DaemonProcess
from tests.support.waiting import wait_for

RECORDER = """import sys
data = sys.argv[2] if len(sys.argv) > 2 else sys.stdin.read()
with open(sys.argv[1], "a", encoding="utf-8") as f:
    f.write(data + "\\n--\\n")
"""


def handoff(
    d: DaemonProcess, *args: str, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """The ``handoff`` CLI against daemon ``d``."""
    return subprocess.run(
        [sys.executable, "-m", "handoffd.cli", "--home", str(d.home), *args],
        capture_output=True, text=True, timeout=180, check=False, input=stdin,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    """Laptop (a) and desk (b); desk's receivers write into files under the test's root."""
    no_bus = {"DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent/handoff-test-bus"}
    with paired_daemons(env_a=no_bus, env_b=no_bus) as p:
        recorder = p.root / "recorder.py"
        recorder.write_text(RECORDER)
        settings = {
            "receive_dir": str(p.root / "received"),
            "consent_builtin": "accept",  # asking is tests/handoff/test_consent.py's
            "open_command": [sys.executable, str(recorder), str(p.root / "opened.txt")],
            "clipboard_command": [sys.executable, str(recorder), str(p.root / "clipboard.txt")],
        }
        status, body = p.b.curl("PATCH", "/v1/settings", settings)
        assert status == 200, body
        yield p


def _handoff_count(d: DaemonProcess) -> int:
    status, body = d.curl("GET", "/v1/handoffs")
    assert status == 200
    return len(body["handoffs"])


@pytest.mark.asyncio
async def test_unknown_types_fail_and_the_session_stays(pair: Pair) -> None:
    async with pair.client(pair.a) as a:
        session = await a.publish(
            "org.example.notes", "typed", items=[Item.of_text("message", "m.txt", "hi")]
        )
        before = _handoff_count(pair.a)
        with pytest.raises(ApiError) as caught:
            await a.send(session.id, "desk", types=["foo"])
        assert caught.value.code == "type-not-in-session"
        assert "foo" in caught.value.message
        assert "its types: message" in caught.value.message
        done = await asyncio.to_thread(
            handoff, pair.a, "send", session.id, "--to", "desk", "--types", "foo"
        )
        assert done.returncode == 1
        assert done.stderr.count("\n") == 1
        assert "its types: message" in done.stderr
        assert (await a.session(session.id)).state == "active"
        assert _handoff_count(pair.a) == before


def test_a_file_arrives_intact_in_the_download_folder_never_overwriting(pair: Pair) -> None:
    src = pair.root / "report.bin"
    digest = write_random(src, 300 * 1024)
    first = handoff(pair.a, "send", str(src), "--to", "desk")
    assert first.returncode == 0, first.stderr
    assert "resumed on desk" in first.stdout
    received = pair.root / "received"
    assert sha256_file(received / "report.bin") == digest
    again = handoff(pair.a, "send", str(src), "--to", "desk")
    assert again.returncode == 0, again.stderr
    assert sha256_file(received / "report.bin") == digest
    assert sha256_file(received / "report (2).bin") == digest


def test_a_folder_of_nested_files_arrives_intact(pair: Pair) -> None:
    top = pair.root / "photos"
    (top / "2025" / "june").mkdir(parents=True)
    (top / "2025" / "empty").mkdir()
    files = {
        "a.jpg": 10_000,
        "2025/b.jpg": 200_000,
        "2025/june/c.jpg": 5,
        "2025/june/a.jpg": 7_000,  # the same name as another file: item names are made distinct
    }
    sums = {rel: write_random(top / rel, size) for rel, size in files.items()}
    (pair.root / "received" / "photos").mkdir(parents=True, exist_ok=True)  # a name conflict
    done = handoff(pair.a, "send", str(top), "--to", "desk")
    assert done.returncode == 0, done.stderr
    landed = pair.root / "received" / "photos (2)"
    for rel, digest in sums.items():
        assert sha256_file(landed / rel) == digest, rel
    got = sorted(str(p.relative_to(landed)) for p in landed.rglob("*") if p.is_file())
    assert got == sorted(files)


def _recorded(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n--\n")[:-1] if path.exists() else []


@pytest.mark.asyncio
async def test_text_url_and_clipboard_reach_the_clipboard_and_the_browser(pair: Pair) -> None:
    text = "meet at 5 — bring the 📎 key\nsecond line"
    done = await asyncio.to_thread(handoff, pair.a, "send", "--text", text, "--to", "desk")
    assert done.returncode == 0, done.stderr
    assert _recorded(pair.root / "clipboard.txt")[-1] == text

    long_text = "line of a long text\n" * 20_000  # longer than one argument may be
    done = await asyncio.to_thread(
        handoff, pair.a, "send", "--text", "-", "--to", "desk", stdin=long_text
    )
    assert done.returncode == 0, done.stderr
    assert _recorded(pair.root / "clipboard.txt")[-1] == long_text

    url = "https://example.org/path?q=1#frag"
    done = await asyncio.to_thread(handoff, pair.a, "send", "--url", url, "--to", "desk")
    assert done.returncode == 0, done.stderr
    assert _recorded(pair.root / "opened.txt")[-1] == url

    bindir = pair.root / "bin"
    bindir.mkdir(exist_ok=True)
    paste = bindir / "wl-paste"
    paste.write_text("#!/bin/sh\nprintf 'from the clipboard'\n")
    paste.chmod(0o755)
    env = {"PATH": f"{bindir}:{os.environ['PATH']}"}
    done = await asyncio.to_thread(handoff, pair.a, "send", "--clipboard", "--to", "desk", env=env)
    assert done.returncode == 0, done.stderr
    assert _recorded(pair.root / "clipboard.txt")[-1] == "from the clipboard"


@pytest.mark.asyncio
async def test_text_without_a_clipboard_stays_in_the_inbox_and_send_says_so(pair: Pair) -> None:
    status, _ = pair.b.curl("PATCH", "/v1/settings", {"text_to_clipboard": False})
    assert status == 200
    try:
        done = await asyncio.to_thread(
            # The target tells it keeps the text: send stops at once, not after --grace.
            handoff,
            pair.a,
            "send",
            "--text",
            "kept for later",
            "--to",
            "desk",
            "--grace",
            "600",
        )
    finally:
        pair.b.curl("PATCH", "/v1/settings", {"text_to_clipboard": True})
    assert done.returncode == 0, done.stderr
    assert "delivered; waiting for desk to open it" in done.stdout
    async with pair.client(pair.a) as a:
        sent = [h for h in await a.handoffs() if h.raw.get("kept_in_inbox")]
        assert len(sent) == 1
        assert sent[0].state == "delivered"
    async with pair.client(pair.b) as b:
        entries = [e for e in await b.inbox() if e.title == "kept for later"]
        assert len(entries) == 1
        assert entries[0].state == "received"
        kept = await asyncio.to_thread(Path(entries[0].items[0].path).read_text)
        assert kept == "kept for later"


@pytest.mark.asyncio
async def test_bad_input_is_one_clear_line_and_nothing_is_sent(pair: Pair) -> None:
    root = pair.root / "bad"
    root.mkdir()
    (root / "fifo").parent.mkdir(exist_ok=True)
    os.mkfifo(root / "fifo")
    outside = pair.root / "outside.txt"
    outside.write_text("secret")
    leaky = root / "leaky"
    leaky.mkdir()
    (leaky / "ok.txt").write_text("ok")
    (leaky / "link").symlink_to(outside)
    many = root / "many"
    many.mkdir()
    for i in range(3):
        (many / f"{i}.txt").write_text(str(i))
    cases = [
        ([str(root / "missing.txt")], "no such file or folder"),
        ([str(root / "fifo")], "is a FIFO"),
        ([str(leaky)], "is a symlink that leaves"),
        (["--url", "file:///etc/passwd"], "not a http(s) URL"),
    ]
    before = _handoff_count(pair.a)
    for args, expected in cases:
        done = await asyncio.to_thread(handoff, pair.a, "send", *args, "--to", "desk")
        assert done.returncode == 1, (args, done.stdout)
        assert done.stderr.count("\n") == 1, done.stderr
        assert expected in done.stderr, done.stderr
    status, body = pair.a.curl(
        "POST", "/v1/send", {"target": "desk", "text": "x" * (1 << 20) + "y"}
    )
    assert status == 400
    assert body["error"]["code"] == "text-too-large"
    assert "at most 1048576 are sent" in body["error"]["message"]
    status, _ = pair.a.curl("PATCH", "/v1/settings", {"send_max_files": 2})
    assert status == 200
    try:
        done = await asyncio.to_thread(handoff, pair.a, "send", str(many), "--to", "desk")
    finally:
        pair.a.curl("PATCH", "/v1/settings", {"send_max_files": 1000})
    assert done.returncode == 1
    assert "more than 2 files" in done.stderr
    assert _handoff_count(pair.a) == before


@pytest.mark.asyncio
async def test_send_content_is_one_sdk_call(pair: Pair) -> None:
    src = pair.root / "sdk.txt"
    src.write_text("through the SDK")
    async with pair.client(pair.a) as a:
        h = await a.send_content("desk", paths=[str(src)])
        assert h.direction == "out"

        async def resumed() -> bool | None:
            return (await a.handoff(h.id)).state == "resumed" or None

        await wait_for(resumed, within=120, what="the SDK send resumed")
    assert (pair.root / "received" / "sdk.txt").read_text() == "through the SDK"


def test_without_a_notification_server_it_is_logged_once(pair: Pair) -> None:
    """Both daemons had handoffs (notifications to show) and no notification server."""
    for d in (pair.a, pair.b):
        assert d.log.read_text().count("desktop notifications unavailable") == 1
