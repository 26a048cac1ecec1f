"""The control API: request schema, the Unix-socket server, and the SDK (``HandoffClient``)."""

from __future__ import annotations

from handoffd.control.client import (
    App,
    DaemonNotRunning,
    Device,
    Handoff,
    HandoffClient,
    InboxEntry,
    InboxItem,
    Invite,
    Item,
    Peer,
    Session,
    SessionItem,
    Status,
)

__all__ = [
    "App",
    "DaemonNotRunning",
    "Device",
    "Handoff",
    "HandoffClient",
    "InboxEntry",
    "InboxItem",
    "Invite",
    "Item",
    "Peer",
    "Session",
    "SessionItem",
    "Status",
]
