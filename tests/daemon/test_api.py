"""The control API of one real daemon, through curl and through the SDK."""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from handoffd.control.client import DaemonNotRunning, HandoffClient, Item
from handoffd.errors import ApiError
from tests.support.processes import DaemonProcess


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    root = Path(tempfile.mkdtemp(prefix="hd", dir="/tmp"))
    home = root / "a"
    home.mkdir(mode=0o700)
    d = DaemonProcess(home).start()
    try:
        yield d
    finally:
        d.kill()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "doc.md").write_text("# the document\n")
    return tmp_path


def test_status_over_curl(daemon: DaemonProcess) -> None:
    status, body = daemon.curl("GET", "/v1/status")
    assert status == 200
    assert body["paired"] is False
    assert len(body["device_id"]) == 32
    assert body["handoff_enabled"] is True
    assert body["version"]


def test_sessions_crud_over_curl(daemon: DaemonProcess, files: Path) -> None:
    doc = files / "doc.md"
    status, created = daemon.curl(
        "POST",
        "/v1/sessions",
        {
            "app_id": "org.example.chat",
            "title": "Chat with Ana",
            "context": {"cursor": 42, "draft": "see you"},
            "items": [
                {"type": "message", "name": "m1.json", "mime": "application/json", "text": "{}"},
                {
                    "type": "clipboard",
                    "name": "clip.bin",
                    "data_base64": base64.b64encode(b"\x00\x01").decode(),
                },
                {"type": "document", "name": "doc.md", "mime": "text/markdown", "path": str(doc)},
                {"type": "x-sketch", "name": "s.txt", "text": "app-defined type"},
            ],
        },
    )
    assert status == 201, created
    sid = created["id"]
    assert created["state"] == "active"
    assert [i["source"] for i in created["items"]] == ["text", "data", "path", "text"]
    assert created["items"][2]["size"] == doc.stat().st_size

    status, listed = daemon.curl("GET", "/v1/sessions")
    assert status == 200
    mine = [s for s in listed["sessions"] if s["id"] == sid]
    assert len(mine) == 1
    assert "text" not in mine[0]["items"][0]

    status, got = daemon.curl("GET", f"/v1/sessions/{sid}")
    assert status == 200
    assert got["context"] == {"cursor": 42, "draft": "see you"}
    assert got["items"][1]["data_base64"] == base64.b64encode(b"\x00\x01").decode()
    assert got["items"][2]["available"] is True

    status, updated = daemon.curl(
        "PUT", f"/v1/sessions/{sid}", {"title": "Chat with Ana and Bo", "context": {"cursor": 7}}
    )
    assert status == 200
    assert updated["title"] == "Chat with Ana and Bo"
    assert updated["context"] == {"cursor": 7}
    assert len(updated["items"]) == 4  # not given: kept

    doc.unlink()  # a referenced file goes away: the session says so
    _, got = daemon.curl("GET", f"/v1/sessions/{sid}")
    assert got["items"][2]["available"] is False

    status, withdrawn = daemon.curl("DELETE", f"/v1/sessions/{sid}")
    assert status == 200
    assert withdrawn["state"] == "withdrawn"
    _, listed = daemon.curl("GET", "/v1/sessions")
    assert sid not in [s["id"] for s in listed["sessions"]]
    _, listed = daemon.curl("GET", "/v1/sessions?state=all")
    assert sid in [s["id"] for s in listed["sessions"]]
    status, err = daemon.curl("PUT", f"/v1/sessions/{sid}", {"title": "again"})
    assert (status, err["error"]["code"]) == (409, "session-withdrawn")
    status, err = daemon.curl("GET", "/v1/sessions/" + "0" * 32)
    assert (status, err["error"]["code"]) == (404, "session-not-found")


def _item(**overrides: Any) -> dict[str, Any]:
    return {"type": "message", "name": "a.txt", "text": "x", **overrides}


def _session(**overrides: Any) -> dict[str, Any]:
    return {"app_id": "org.example.app", "title": "t", **overrides}


BAD_REQUESTS: list[tuple[str, str, str, Any, bytes | None, int, str]] = [
    ("malformed json", "POST", "/v1/sessions", None, b'{"app_id": ', 400, "malformed-json"),
    ("not an object", "POST", "/v1/sessions", [1, 2], None, 400, "not-an-object"),
    (
        "duplicate key",
        "POST",
        "/v1/sessions",
        None,
        b'{"app_id":"a","app_id":"b","title":""}',
        400,
        "malformed-json",
    ),
    (
        "NaN",
        "POST",
        "/v1/sessions",
        None,
        b'{"app_id":"a","title":"t","context":{"x":NaN}}',
        400,
        "malformed-json",
    ),
    ("unknown field", "POST", "/v1/sessions", _session(owner="me"), None, 400, "unknown-field"),
    ("missing field", "POST", "/v1/sessions", {"title": "t"}, None, 400, "missing-field"),
    ("wrong type", "POST", "/v1/sessions", _session(title=5), None, 400, "wrong-type"),
    ("wrong item type", "POST", "/v1/sessions", _session(items={"a": 1}), None, 400, "wrong-type"),
    ("bad app id", "POST", "/v1/sessions", _session(app_id="../evil"), None, 400, "bad-app-id"),
    (
        "traversal name",
        "POST",
        "/v1/sessions",
        _session(items=[_item(name="../../etc/passwd")]),
        None,
        400,
        "bad-item-name",
    ),
    (
        "slash name",
        "POST",
        "/v1/sessions",
        _session(items=[_item(name="a/b")]),
        None,
        400,
        "bad-item-name",
    ),
    (
        "backslash name",
        "POST",
        "/v1/sessions",
        _session(items=[_item(name="a\\b")]),
        None,
        400,
        "bad-item-name",
    ),
    (
        "dotdot name",
        "POST",
        "/v1/sessions",
        _session(items=[_item(name="..")]),
        None,
        400,
        "bad-item-name",
    ),
    (
        "control char name",
        "POST",
        "/v1/sessions",
        _session(items=[_item(name="a\x01b")]),
        None,
        400,
        "bad-item-name",
    ),
    (
        "long name",
        "POST",
        "/v1/sessions",
        _session(items=[_item(name="é" * 128)]),
        None,
        400,
        "bad-item-name",
    ),
    (
        "bad type word",
        "POST",
        "/v1/sessions",
        _session(items=[_item(type="Bad Type")]),
        None,
        400,
        "bad-item-type",
    ),
    (
        "two contents",
        "POST",
        "/v1/sessions",
        _session(items=[_item(data_base64="eA==")]),
        None,
        400,
        "item-content",
    ),
    (
        "bad base64",
        "POST",
        "/v1/sessions",
        _session(items=[{"type": "url", "name": "u", "data_base64": "***"}]),
        None,
        400,
        "bad-base64",
    ),
    (
        "duplicate names",
        "POST",
        "/v1/sessions",
        _session(items=[_item(), _item()]),
        None,
        400,
        "duplicate-item-name",
    ),
    (
        "missing file",
        "POST",
        "/v1/sessions",
        _session(items=[{"type": "document", "name": "d", "path": "/nonexistent/file.txt"}]),
        None,
        400,
        "item-file-missing",
    ),
    (
        "directory",
        "POST",
        "/v1/sessions",
        _session(items=[{"type": "document", "name": "d", "path": "/tmp"}]),
        None,
        400,
        "item-file-not-regular",
    ),
    (
        "relative path",
        "POST",
        "/v1/sessions",
        _session(items=[{"type": "document", "name": "d", "path": "etc/passwd"}]),
        None,
        400,
        "value-invalid",
    ),
    (
        "context too large",
        "POST",
        "/v1/sessions",
        _session(context={"x": "y" * 70_000}),
        None,
        413,
        "context-too-large",
    ),
    ("context not object", "POST", "/v1/sessions", _session(context=[1]), None, 400, "wrong-type"),
    (
        "oversized body",
        "POST",
        "/v1/sessions",
        None,
        b'{"x":"' + b"a" * (17 * 1024 * 1024) + b'"}',
        413,
        "body-too-large",
    ),
    ("bad launch", "POST", "/v1/apps", {"app_id": "org.x", "launch": []}, None, 400, "bad-launch"),
    (
        "launch wrong type",
        "POST",
        "/v1/apps",
        {"app_id": "org.x", "launch": "xdg-open"},
        None,
        400,
        "wrong-type",
    ),
    ("unknown setting", "PATCH", "/v1/settings", {"colour": "blue"}, None, 400, "setting-unknown"),
    ("bad setting", "PATCH", "/v1/settings", {"auto_accept": "yes"}, None, 400, "setting-invalid"),
    (
        "bad accept type",
        "PATCH",
        "/v1/settings",
        {"accept_types": ["../x"]},
        None,
        400,
        "setting-invalid",
    ),
    ("bad session id", "GET", "/v1/sessions/..%2F..%2Fetc", None, None, 404, "session-not-found"),
    ("unknown route", "GET", "/v1/nothing-here", None, None, 404, "not-found"),
    ("wrong method", "DELETE", "/v1/status", None, None, 405, "method-not-allowed"),
    ("not paired: invite", "POST", "/v1/invites", {}, None, 409, "not-paired"),
    (
        "bad invite",
        "POST",
        "/v1/pair",
        {"invite": "handoff://pair?x=1"},
        None,
        400,
        "invite-malformed",
    ),
    ("bad device id", "DELETE", "/v1/devices/not-an-id", None, None, 400, "bad-device-id"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "raw", "status", "code"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_requests_get_json_errors(
    daemon: DaemonProcess,
    method: str,
    path: str,
    body: Any,
    raw: bytes | None,
    status: int,
    code: str,
) -> None:
    got_status, got = daemon.curl(method, path, body, raw=raw)
    assert got_status == status, got
    assert got["error"]["code"] == code
    assert isinstance(got["error"]["message"], str)
    assert got["error"]["message"]
    # ... and the daemon keeps serving.
    assert daemon.curl("GET", "/v1/status")[0] == 200


def test_unreadable_item_file(daemon: DaemonProcess, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # opening a FIFO must not hang the daemon
    status, err = daemon.curl(
        "POST",
        "/v1/sessions",
        _session(items=[{"type": "document", "name": "p", "path": str(fifo)}]),
    )
    assert (status, err["error"]["code"]) == (400, "item-file-not-regular")


def test_openapi_document(daemon: DaemonProcess) -> None:
    status, doc = daemon.curl("GET", "/v1/openapi.json")
    assert status == 200
    assert doc["openapi"].startswith("3.1")
    for path in (
        "/v1/status",
        "/v1/devices",
        "/v1/pair",
        "/v1/invites",
        "/v1/sessions",
        "/v1/sessions/{id}",
        "/v1/apps",
        "/v1/settings",
        "/v1/events",
    ):
        assert path in doc["paths"], path
    assert doc["components"]["schemas"]["SessionIn"]["additionalProperties"] is False


@pytest.mark.asyncio
async def test_sdk_sessions_apps_settings_events(daemon: DaemonProcess, tmp_path: Path) -> None:
    doc = tmp_path / "notes.txt"
    doc.write_text("notes")
    async with HandoffClient(daemon.socket) as client:
        events = client.events(heartbeats=True)
        # The daemon subscribes before it writes the first heartbeat: from here on, nothing is missed.
        assert (await anext(events))["type"] == "heartbeat"
        session = await client.publish(
            "org.example.notes",
            "Notes",
            context={"scroll": 3},
            items=[
                Item.of_text("document", "a.md", "# a", mime="text/markdown"),
                Item.of_data("clipboard", "c.bin", b"\xff\x00"),
                Item.of_path("document", "notes.txt", doc, mime="text/plain"),
            ],
        )
        event = await anext(events)
        assert event["type"] == "session.published"
        assert event["session_id"] == session.id
        assert session.items[1].data == b"\xff\x00"
        assert session.items[2].path == str(doc)

        got = await client.session(session.id)
        assert got.context == {"scroll": 3}
        assert got.items[0].text == "# a"
        updated = await client.update_session(
            session.id, items=[Item.of_text("message", "m.txt", "hi")]
        )
        assert [i.name for i in updated.items] == ["m.txt"]
        assert session.id in [s.id for s in await client.sessions()]
        withdrawn = await client.withdraw(session.id)
        assert withdrawn.state == "withdrawn"
        assert session.id not in [s.id for s in await client.sessions()]
        with pytest.raises(ApiError) as info:
            await client.withdraw(session.id)
        assert (info.value.status, info.value.code) == (409, "session-withdrawn")

        app = await client.register_app("org.example.notes", ["/usr/bin/notes", "--resume"])
        assert app.launch == ("/usr/bin/notes", "--resume")
        assert app in await client.apps()

        settings = await client.update_settings(accept_types=["message", "x-sketch"])
        assert settings.accept_types == ("message", "x-sketch")
        assert settings.accepts("x-sketch")
        assert not settings.accepts("document")
        assert (await client.settings()).accept_types == ("message", "x-sketch")
        settings = await client.update_settings(accept_types=["*"])
        assert settings.accepts("anything")
        await events.aclose()


@pytest.mark.asyncio
async def test_sdk_errors_and_daemon_not_running(daemon: DaemonProcess, short_dir: Path) -> None:
    async with HandoffClient(daemon.socket) as client:
        with pytest.raises(ApiError) as info:
            await client.publish(
                "org.x", "t", items=[{"type": "message", "name": "../x", "text": ""}]
            )
        assert info.value.code == "bad-item-name"
        assert info.value.status == 400
    async with HandoffClient(home=short_dir) as client:
        with pytest.raises(DaemonNotRunning) as not_running:
            await client.status()
    assert not_running.value.code == "daemon-not-running"
    assert "handoffd" in not_running.value.message
    assert "start" in not_running.value.message


def test_json_error_shape_is_stable(daemon: DaemonProcess) -> None:
    status, body = daemon.curl("POST", "/v1/sessions", raw=b"{")
    assert status == 400
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert json.dumps(body)  # plain JSON
