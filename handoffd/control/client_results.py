"""What the SDK's methods return: the control API's answer models (``models``), frozen msgspec
structs decoded straight from the daemon's JSON (unknown fields ignored)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from handoffd.control.answers import (
    App,
    Device,
    Handoff,
    InboxEntry,
    InboxItem,
    Invite,
    Peer,
    Session,
    SessionItem,
    Status,
)
from handoffd.items import Item

__all__ = [
    "App",
    "Device",
    "Handoff",
    "InboxEntry",
    "InboxItem",
    "Invite",
    "Peer",
    "Session",
    "SessionItem",
    "Status",
    "items_json",
]


def items_json(items: Sequence[Item | Mapping[str, Any]]) -> list[Any]:
    """Items (or ready-made item dicts) as the request's ``items``."""
    return [i.to_request() if isinstance(i, Item) else dict(i) for i in items]
