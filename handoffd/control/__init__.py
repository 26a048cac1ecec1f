"""The control API: request schema, the Unix-socket server, and the SDK (``HandoffClient``).

The SDK's names are loaded on first use, so that importing one module of this package (the
models, ``client_decode``) does not load the asyncio client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from handoffd.control.client import (
        App,
        Asking,
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
        Unpaired,
    )

__all__ = [
    "App",
    "Asking",
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
    "Unpaired",
]


def __getattr__(name: str) -> Any:
    """The SDK's public names, from ``handoffd.control.client``."""
    if name in __all__:
        return getattr(importlib.import_module("handoffd.control.client"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
