"""What the SDK's methods return: frozen dataclasses parsed from the daemon's JSON answers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from handoffd.items import Item

# ---------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Status:
    """``GET /v1/status``."""

    device_id: str
    device_name: str
    paired: bool
    account_id: str | None
    server_url: str | None
    server_reachable: bool | None
    handoff_enabled: bool
    cert_not_after: float | None
    revoked: bool
    version: str
    raw: Mapping[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Device:
    """One device of the account (``GET /v1/devices``)."""

    device_id: str
    name: str
    platform: str
    self: bool
    online: bool | None
    nearby: bool
    addresses: tuple[str, ...]
    last_seen: float | None
    revoked: bool


@dataclass(frozen=True, slots=True)
class Invite:
    """An invite made by this device (``POST /v1/invites``)."""

    url: str
    code: str
    expires_at: float
    qr_svg: str
    page_url: str | None = None
    """The browser pairing page for this invite, if the server gives one: what the QR holds."""


@dataclass(frozen=True, slots=True)
class Session:
    """A session an app published (``/v1/sessions``); ``state``: active, handed-off, withdrawn."""

    id: str
    app_id: str
    title: str
    context: Mapping[str, Any]
    items: tuple[Item, ...]
    state: str
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class App:
    """How to launch an app to resume a session (``POST /v1/apps``)."""

    app_id: str
    launch: tuple[str, ...]


# ---------------------------------------------------------------- parsing


def status_from_json(d: Mapping[str, Any]) -> Status:
    """``GET /v1/status``'s answer as a Status."""
    return Status(
        device_id=d["device_id"],
        device_name=d["device_name"],
        paired=d["paired"],
        account_id=d.get("account_id"),
        server_url=d.get("server_url"),
        server_reachable=d.get("server_reachable"),
        handoff_enabled=d["handoff_enabled"],
        cert_not_after=d.get("cert_not_after"),
        revoked=d.get("revoked", False),
        version=d["version"],
        raw=d,
    )


def device_from_json(d: Mapping[str, Any]) -> Device:
    """One device of ``GET /v1/devices`` as a Device."""
    return Device(
        device_id=d["device_id"],
        name=d["name"],
        platform=d["platform"],
        self=d["self"],
        online=d.get("online"),
        nearby=d.get("nearby", False),
        addresses=tuple(d.get("addresses", ())),
        last_seen=d.get("last_seen"),
        revoked=d["revoked"],
    )


def session_from_json(d: Mapping[str, Any]) -> Session:
    """A session of ``/v1/sessions`` as a Session."""
    return Session(
        id=d["id"],
        app_id=d["app_id"],
        title=d["title"],
        context=d["context"],
        items=tuple(Item.from_json(i) for i in d["items"]),
        state=d["state"],
        created_at=d["created_at"],
        updated_at=d["updated_at"],
    )


def items_json(items: Sequence[Item | Mapping[str, Any]]) -> list[Any]:
    """Items (or ready-made item dicts) as the request's ``items``."""
    return [i.to_request() if isinstance(i, Item) else dict(i) for i in items]


# ---------------------------------------------------------------- handoff engine results


@dataclass(frozen=True, slots=True)
class Peer:
    """The other device of a handoff."""

    device_id: str
    name: str


@dataclass(frozen=True, slots=True)
class Handoff:
    """A handoff (``/v1/handoffs``); ``state``: pending, connecting, transferring, delivered,
    resumed, retrying, declined, cancelled or failed; ``error`` is ``{code, message}``."""

    id: str
    direction: str
    session_id: str | None
    peer: Peer
    state: str
    path: str | None
    bytes_done: int
    bytes_total: int
    attempts: int
    next_retry_at: float | None
    error: Mapping[str, str] | None
    created_at: float
    updated_at: float
    raw: Mapping[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class InboxItem:
    """A received item: a file at ``path`` inside the inbox."""

    type: str
    name: str
    mime: str
    size: int
    sha256: str
    path: str


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """A received session (``/v1/inbox``); ``state``: received or resumed."""

    id: str
    session_id: str
    app_id: str
    title: str
    context: Mapping[str, Any]
    sender: Peer
    items: tuple[InboxItem, ...]
    state: str
    received_at: float
    resumed_at: float | None


def peer_from_json(d: Mapping[str, Any]) -> Peer:
    """A handoff's other device as a Peer."""
    return Peer(device_id=d["device_id"], name=d.get("name", ""))


def handoff_from_json(d: Mapping[str, Any]) -> Handoff:
    """A handoff of ``/v1/handoffs`` as a Handoff."""
    return Handoff(
        id=d["id"],
        direction=d["direction"],
        session_id=d.get("session_id"),
        peer=peer_from_json(d["peer"]),
        state=d["state"],
        path=d.get("path"),
        bytes_done=d["bytes_done"],
        bytes_total=d["bytes_total"],
        attempts=d["attempts"],
        next_retry_at=d.get("next_retry_at"),
        error=d.get("error"),
        created_at=d["created_at"],
        updated_at=d["updated_at"],
        raw=d,
    )


def inbox_entry_from_json(d: Mapping[str, Any]) -> InboxEntry:
    """A received session of ``/v1/inbox`` as an InboxEntry."""
    return InboxEntry(
        id=d["id"],
        session_id=d["session_id"],
        app_id=d["app_id"],
        title=d["title"],
        context=d["context"],
        sender=peer_from_json(d["from"]),
        items=tuple(
            InboxItem(
                type=i["type"],
                name=i["name"],
                mime=i["mime"],
                size=i["size"],
                sha256=i["sha256"],
                path=i["path"],
            )
            for i in d["items"]
        ),
        state=d["state"],
        received_at=d["received_at"],
        resumed_at=d.get("resumed_at"),
    )
