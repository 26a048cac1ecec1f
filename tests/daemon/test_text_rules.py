"""Text rules of the control API on a real daemon (curl over its Unix socket).

Strings that are not UTF-8 (a lone surrogate, sent as the JSON escape ``\\ud800``)
are refused where they enter with ``not-utf8`` (they used to be stored and fail
later with a 500 and a traceback); names shown to people refuse format and
line-separator characters (``\\u202etxt.exe`` shows as ``exe.txt``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import DaemonProcess

LONE = "\ud800"


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    root = Path(tempfile.mkdtemp(prefix="hd", dir="/tmp"))
    home = root / "t"
    home.mkdir(mode=0o700)
    d = DaemonProcess(home).start()
    try:
        yield d
    finally:
        d.kill()
        shutil.rmtree(root, ignore_errors=True)


def _session(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "app_id": "org.example.notes",
        "title": "Draft",
        "context": {"cursor": 1},
        "items": [{"type": "document", "name": "d.md", "text": "hello"}],
    }
    body.update(over)
    return body


def _item(**over: Any) -> dict[str, Any]:
    return {"type": "document", "name": "d.md", "text": "hello", **over}


NOT_UTF8 = [
    ("title", "POST", "/v1/sessions", _session(title=f"a{LONE}b")),
    ("item text", "POST", "/v1/sessions", _session(items=[_item(text=LONE)])),
    ("item name", "POST", "/v1/sessions", _session(items=[_item(name=f"x{LONE}")])),
    ("context value", "POST", "/v1/sessions", _session(context={"k": [LONE]})),
    ("context key", "POST", "/v1/sessions", _session(context={LONE: 1})),
    ("app id", "POST", "/v1/sessions", _session(app_id=LONE)),
    ("launch argument", "POST", "/v1/apps", {"app_id": "org.x", "launch": ["/bin/true", LONE]}),
    ("device name", "PATCH", "/v1/settings", {"device_name": f"pc{LONE}"}),
    ("pair invite", "POST", "/v1/pair", {"invite": LONE}),
    ("handoff target", "POST", "/v1/handoffs", {"session_id": "0" * 32, "target": LONE}),
]


@pytest.mark.parametrize(
    ("method", "path", "body"), [c[1:] for c in NOT_UTF8], ids=[c[0] for c in NOT_UTF8]
)
def test_strings_that_are_not_utf8_are_refused(
    daemon: DaemonProcess, method: str, path: str, body: dict[str, Any]
) -> None:
    status, answer = daemon.curl(method, path, body)
    assert (status, answer["error"]["code"]) == (400, "not-utf8")
    assert "control request failed" not in daemon.log.read_text()


def test_an_updated_title_that_is_not_utf8_is_refused(daemon: DaemonProcess) -> None:
    status, created = daemon.curl("POST", "/v1/sessions", _session())
    assert status == 201
    status, answer = daemon.curl("PUT", f"/v1/sessions/{created['id']}", {"title": LONE})
    assert (status, answer["error"]["code"]) == (400, "not-utf8")
    status, got = daemon.curl("GET", f"/v1/sessions/{created['id']}")
    assert (status, got["title"]) == (200, "Draft")


def test_a_valid_surrogate_pair_is_text(daemon: DaemonProcess) -> None:
    # "\ud83d\ude00" in JSON is one character (U+1F600): accepted, and kept as sent.
    status, created = daemon.curl("POST", "/v1/sessions", _session(title="ok \U0001f600"))
    assert status == 201
    status, got = daemon.curl("GET", f"/v1/sessions/{created['id']}")
    assert got["title"] == "ok \U0001f600"


SPOOFING = ["\u202etxt.exe", "a\u200bb", "a\u200db", "\ufeffx", "a\u2066b", "a\u2028b", "a\u2029b"]


@pytest.mark.parametrize("name", SPOOFING)
def test_item_names_refuse_format_and_separator_characters(
    daemon: DaemonProcess, name: str
) -> None:
    status, answer = daemon.curl("POST", "/v1/sessions", _session(items=[_item(name=name)]))
    assert (status, answer["error"]["code"]) == (400, "bad-item-name")


@pytest.mark.parametrize("name", SPOOFING)
def test_device_names_refuse_format_and_separator_characters(
    daemon: DaemonProcess, name: str
) -> None:
    status, answer = daemon.curl("PATCH", "/v1/settings", {"device_name": name})
    assert (status, answer["error"]["code"]) == (400, "setting-invalid")
    status, answer = daemon.curl("POST", "/v1/pair", {"invite": "ABCD-EFGH", "name": name})
    assert (status, answer["error"]["code"]) == (400, "bad-device-name")
    status, settings = daemon.curl("GET", "/v1/settings")
    assert settings["device_name"] != name


def test_ordinary_unicode_names_pass(daemon: DaemonProcess) -> None:
    items = [_item(name="日本語 résumé.md"), _item(name="naïve (1).txt")]
    status, _ = daemon.curl("POST", "/v1/sessions", _session(items=items))
    assert status == 201
    status, answer = daemon.curl("PATCH", "/v1/settings", {"device_name": "Zoë's laptop"})
    assert (status, answer["device_name"]) == (200, "Zoë's laptop")


@pytest.mark.parametrize("title", ["\u202eevil", "a\u200bb", "line\u2028break"])
def test_titles_refuse_format_and_separator_characters(daemon: DaemonProcess, title: str) -> None:
    status, answer = daemon.curl("POST", "/v1/sessions", _session(title=title))
    assert (status, answer["error"]["code"]) == (400, "bad-title")


def test_titles_may_hold_other_spaces(daemon: DaemonProcess) -> None:
    title = "会議\u3000メモ\u00a0draft"
    status, created = daemon.curl("POST", "/v1/sessions", _session(title=title))
    assert (status, created["title"]) == (201, title)


def test_a_refused_launch_is_not_stored(daemon: DaemonProcess) -> None:
    """Fuzz finding: the app was stored although the POST failed, then GET /v1/apps answered 500."""
    status, answer = daemon.curl("POST", "/v1/apps", {"app_id": "org.x", "launch": [LONE]})
    assert (status, answer["error"]["code"]) == (400, "not-utf8")
    status, apps = daemon.curl("GET", "/v1/apps")
    assert status == 200
    assert "org.x" not in json.dumps(apps)
