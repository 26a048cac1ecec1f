"""A session may carry many items (100 messages and documents), but not unboundedly many."""

from __future__ import annotations

from collections.abc import Callable

from handoffd.control.schema import MAX_ITEMS
from tests.support.processes import DaemonProcess


def _items(n: int) -> list[dict[str, str]]:
    return [{"type": "message", "name": f"m{i}.txt", "text": f"message {i}"} for i in range(n)]


def test_hundred_items_accepted_too_many_refused(daemons: Callable[..., DaemonProcess]) -> None:
    d = daemons("a").start()
    body = {"app_id": "org.x", "title": "t", "context": {}, "items": _items(103)}
    status, reply = d.curl("POST", "/v1/sessions", body)
    assert status == 201, reply
    assert len(reply["items"]) == 103
    body["items"] = _items(MAX_ITEMS + 1)
    status, reply = d.curl("POST", "/v1/sessions", body)
    assert status == 400
    assert reply["error"]["code"] == "too-many-items"
