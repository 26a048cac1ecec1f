"""The one schema of the control API: the generated OpenAPI document is valid OpenAPI 3.1, a
real daemon's answers match it, and the request models drive validation."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
from openapi_spec_validator import validate as validate_spec

from handoffd.control import answers, models
from handoffd.control.body import model_checkers, request_fields
from handoffd.control.client import HandoffClient, Item
from handoffd.control.openapi import MODELS, openapi_document
from handoffd.errors import ApiError
from tests.support.processes import DaemonProcess

REQUEST_MODELS = [m for m in MODELS if issubclass(m, models.Request)] + [answers.App]


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


def test_generated_document_is_valid_openapi() -> None:
    doc = openapi_document("0.0.0")
    validate_spec(doc)
    schemas = doc["components"]["schemas"]
    # Every model is a component, named as the document always named it.
    for name in ("Status", "Device", "Item", "ItemIn", "SessionIn", "Session", "Settings", "Pair"):
        assert name in schemas, name
    assert schemas["SessionIn"]["additionalProperties"] is False
    assert schemas["SessionIn"]["required"] == ["app_id", "title"]
    assert "oneOf" in schemas["ItemIn"]
    # Every reference resolves.
    text = msgspec.json.encode(doc).decode()
    for name in {part.split('"')[0] for part in text.split("#/components/schemas/")[1:]}:
        assert name in schemas, name


def test_daemon_serves_the_generated_document(daemon: DaemonProcess) -> None:
    status, doc = daemon.curl("GET", "/v1/openapi.json")
    assert status == 200
    validate_spec(doc)
    assert doc["components"]["schemas"] == openapi_document("x")["components"]["schemas"]
    events = doc["paths"]["/v1/events"]["get"]
    assert [p["name"] for p in events["parameters"]] == ["app_id"]


def _answer_schema(doc: dict[str, Any], path: str, method: str, status: str) -> dict[str, Any]:
    op = doc["paths"][path][method]
    schema = op["responses"][status]["content"]["application/json"]["schema"]
    return {**schema, "components": doc["components"]}


def _check(doc: dict[str, Any], path: str, method: str, status: str, body: Any) -> None:
    schema = _answer_schema(doc, path, method, status)
    jsonschema.validate(body, schema, cls=jsonschema.Draft202012Validator)


def test_answers_match_the_document(daemon: DaemonProcess, tmp_path: Path) -> None:
    _, doc = daemon.curl("GET", "/v1/openapi.json")
    file = tmp_path / "f.txt"
    file.write_text("x")
    status, st = daemon.curl("GET", "/v1/status")
    _check(doc, "/v1/status", "get", "200", st)
    status, devices = daemon.curl("GET", "/v1/devices")
    _check(doc, "/v1/devices", "get", "200", devices)
    body = {
        "app_id": "org.example.s",
        "title": "t",
        "context": {"a": [1, 2]},
        "items": [
            {"type": "message", "name": "m", "text": "hi"},
            {"type": "clipboard", "name": "c", "data_base64": "AAE="},
            {"type": "document", "name": "d", "path": str(file)},
        ],
    }
    status, created = daemon.curl("POST", "/v1/sessions", body)
    assert status == 201
    _check(doc, "/v1/sessions", "post", "201", created)
    status, one = daemon.curl("GET", f"/v1/sessions/{created['id']}")
    _check(doc, "/v1/sessions/{id}", "get", "200", one)
    assert one["items"][2]["available"] is True
    status, listed = daemon.curl("GET", "/v1/sessions?state=all")
    _check(doc, "/v1/sessions", "get", "200", listed)
    status, app = daemon.curl("POST", "/v1/apps", {"app_id": "org.example.s", "launch": ["x"]})
    _check(doc, "/v1/apps", "post", "200", app)
    status, apps = daemon.curl("GET", "/v1/apps")
    _check(doc, "/v1/apps", "get", "200", apps)
    status, settings = daemon.curl("GET", "/v1/settings")
    _check(doc, "/v1/settings", "get", "200", settings)
    status, withdrawn = daemon.curl("DELETE", f"/v1/sessions/{created['id']}")
    _check(doc, "/v1/sessions/{id}", "delete", "200", withdrawn)
    status, error = daemon.curl("POST", "/v1/invites", {})
    assert status == 409
    _check(doc, "/v1/invites", "post", "4XX", error)
    # A wrong answer is caught: the check can fail.
    with pytest.raises(jsonschema.ValidationError):
        _check(doc, "/v1/status", "get", "200", {**st, "paired": "yes"})


def test_request_models_drive_validation() -> None:
    for model in REQUEST_MODELS:  # every field has a checker (a Check, a bounded str or a bool)
        required, optional = model_checkers(model)
        assert set(required) | set(optional) == {
            f.encode_name for f in msgspec.structs.fields(model)
        }
    with pytest.raises(ApiError) as info:
        request_fields(models.SessionIn, {"app_id": "a", "title": "t", "owner": 1}, "session")
    assert (info.value.code, info.value.message) == (
        "unknown-field",
        "session: unknown field 'owner'",
    )
    with pytest.raises(ApiError) as info:
        request_fields(models.SessionIn, {"title": "t"}, "session")
    assert (info.value.code, info.value.message) == (
        "missing-field",
        "session: missing field 'app_id'",
    )
    with pytest.raises(ApiError) as info:
        request_fields(models.Pair, {"invite": ""}, "pair")
    assert (info.value.code, info.value.message) == (
        "value-invalid",
        "pair.invite must be 1 to 2048 characters",
    )
    with pytest.raises(ApiError) as info:
        request_fields(
            models.HandoffIn, {"session_id": "a" * 32, "target": "b", "types": ["A"]}, "h"
        )
    assert info.value.code == "bad-item-type"
    checked = request_fields(
        models.SessionIn,
        {"app_id": "a", "title": "t", "items": [{"type": "url", "name": "u", "text": "x"}]},
        "s",
    )
    assert checked["items"] == (Item.of_text("url", "u", "x", mime="application/octet-stream"),)


@pytest.mark.asyncio
async def test_sdk_returns_the_models(daemon: DaemonProcess) -> None:
    async with HandoffClient(daemon.socket) as client:
        status = await client.status()
        assert isinstance(status, answers.Status)
        assert status.raw["device_id"] == status.device_id
        session = await client.publish(
            "org.example.m", "t", items=[Item.of_data("clipboard", "c", b"\x00")]
        )
        assert isinstance(session, answers.Session)
        assert session.items[0].data == b"\x00"
        devices = await client.devices()
        assert [d.self for d in devices] == [True]


@pytest.mark.asyncio
async def test_everyday_routes_are_described_by_models(daemon: DaemonProcess) -> None:
    _, doc = daemon.curl("GET", "/v1/openapi.json")
    schemas = doc["components"]["schemas"]
    assert schemas["SendIn"]["additionalProperties"] is False
    assert schemas["Asking"]["properties"]["from"] == {"$ref": "#/components/schemas/Peer"}
    assert "revoked_at_server" in schemas["Unpaired"]["required"]
    assert schemas["Settings"]["properties"]["consent_builtin"]["enum"] == [
        "accept",
        "ask",
        "decline",
    ]
    send = doc["paths"]["/v1/send"]["post"]
    assert send["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SendIn"
    }
    status, asking = daemon.curl("GET", "/v1/asking")
    assert status == 200
    _check(doc, "/v1/asking", "get", "200", asking)
    status, error = daemon.curl("POST", "/v1/send", {"target": "desk", "text": "x", "url": "y"})
    assert (status, error["error"]["code"]) == (400, "send-what")
    _check(doc, "/v1/send", "post", "4XX", error)
    status, error = daemon.curl("POST", "/v1/send", {"target": "desk", "paths": []})
    assert (status, error["error"]["code"]) == (400, "wrong-type")
    status, error = daemon.curl("POST", "/v1/asking/" + "a" * 32 + "/accept", {"x": 1})
    assert (status, error["error"]["code"]) == (400, "unknown-field")
    async with HandoffClient(daemon.socket) as client:
        assert await client.asking() == []
        with pytest.raises(ApiError) as info:
            await client.accept("a" * 32)
        assert (info.value.code, info.value.status) == ("asking-not-found", 404)
        with pytest.raises(ApiError) as info:
            await client.unpair()
        assert info.value.code == "not-paired"
