"""The Python SDK of the control API: ``HandoffClient`` over the daemon's Unix socket.

Every method returns frozen dataclasses (or raises): ``ApiError`` with the
daemon's stable ``code`` and HTTP ``status`` for a refused request,
``DaemonNotRunning`` when nothing listens on the socket. ``request()`` is the
escape hatch for endpoints without a typed method yet.

    async with HandoffClient(home="/tmp/hd1") as client:
        status = await client.status()
        session = await client.publish("org.example.notes", "Draft", items=[
            Item.of_text("document", "draft.md", "# hello", mime="text/markdown"),
        ])
        async for event in client.events():
            ...
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from handoffd.control.answers import (
    AppList,
    DeviceList,
    HandoffList,
    InboxList,
    RevokedDevice,
    SessionList,
)
from handoffd.control.client_everyday import Asking, EverydayCalls, Unpaired
from handoffd.control.client_results import (
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
    items_json,
)
from handoffd.control.client_transport import DaemonNotRunning
from handoffd.errors import ApiError, HandoffError
from handoffd.items import Item

if TYPE_CHECKING:
    from handoffd.config import Settings

FINAL_STATES = ("resumed", "declined", "cancelled", "failed")
"""States a handoff never leaves."""
END_STATES = ("delivered", *FINAL_STATES)
"""What ``wait_handoff`` waits for by default: the session is on the target, or it never will be."""

__all__ = [
    "END_STATES",
    "FINAL_STATES",
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
    "Settings",
    "Status",
    "Unpaired",
]


class HandoffClient(EverydayCalls):
    """Async client of one daemon's control API (``socket`` path, or the socket of ``home``)."""

    # ------------------------------------------------------------ device

    async def status(self) -> Status:
        """Device id and name, account, paired?, server reachable?, handoff enabled?, version."""
        return await self.request_as(Status, "GET", "/v1/status")

    async def devices(self) -> list[Device]:
        """The account's devices (from the server when reachable, else the local cache)."""
        return list((await self.request_as(DeviceList, "GET", "/v1/devices")).devices)

    async def pair(
        self,
        invite: str,
        *,
        server: str | None = None,
        fingerprint: str | None = None,
        name: str | None = None,
    ) -> Status:
        """Join an account with a ``handoff://pair?...`` URL, or a short code plus ``server``."""
        body: dict[str, Any] = {"invite": invite}
        if server is not None:
            body["server"] = server
        if fingerprint is not None:
            body["fingerprint"] = fingerprint
        if name is not None:
            body["name"] = name
        return await self.request_as(Status, "POST", "/v1/pair", body)

    async def create_invite(self) -> Invite:
        """A new single-use invite to this device's account (URL, code, expiry, QR as SVG)."""
        return await self.request_as(Invite, "POST", "/v1/invites", {})

    async def revoke(self, device_id: str) -> Device:
        """Revoke a device of the account through the server; the device as now known."""
        return (await self.request_as(RevokedDevice, "DELETE", f"/v1/devices/{device_id}")).device

    # ------------------------------------------------------------ sessions

    async def publish(
        self,
        app_id: str,
        title: str,
        *,
        context: Mapping[str, Any] | None = None,
        items: Sequence[Item | Mapping[str, Any]] = (),
    ) -> Session:
        """Publish a session so it can be handed off."""
        body = {
            "app_id": app_id,
            "title": title,
            "context": dict(context or {}),
            "items": items_json(items),
        }
        return await self.request_as(Session, "POST", "/v1/sessions", body)

    async def sessions(self, *, include_withdrawn: bool = False) -> list[Session]:
        """Published sessions (items without their content)."""
        params = {"state": "all"} if include_withdrawn else None
        result = await self.request_as(SessionList, "GET", "/v1/sessions", params=params)
        return list(result.sessions)

    async def session(self, session_id: str) -> Session:
        """One session with its items' text and data."""
        return await self.request_as(Session, "GET", f"/v1/sessions/{session_id}")

    async def update_session(
        self,
        session_id: str,
        *,
        title: str | None = None,
        context: Mapping[str, Any] | None = None,
        items: Sequence[Item | Mapping[str, Any]] | None = None,
    ) -> Session:
        """Replace the given fields of an active session."""
        body: dict[str, Any] = {}
        if title is not None:
            body["title"] = title
        if context is not None:
            body["context"] = dict(context)
        if items is not None:
            body["items"] = items_json(items)
        return await self.request_as(Session, "PUT", f"/v1/sessions/{session_id}", body)

    async def withdraw(self, session_id: str) -> Session:
        """Withdraw a session: it can no longer be handed off; its stored content is dropped."""
        return await self.request_as(Session, "DELETE", f"/v1/sessions/{session_id}")

    # ------------------------------------------------------------ apps and settings

    async def register_app(self, app_id: str, launch: Sequence[str]) -> App:
        """Register (or replace) the argv that launches ``app_id`` to resume a session."""
        body = {"app_id": app_id, "launch": list(launch)}
        return await self.request_as(App, "POST", "/v1/apps", body)

    async def apps(self) -> list[App]:
        """Registered apps."""
        return list((await self.request_as(AppList, "GET", "/v1/apps")).apps)

    async def settings(self) -> Settings:
        """Current settings."""
        from handoffd.config import Settings

        return Settings.from_mapping(await self.request("GET", "/v1/settings"), strict=False)

    async def update_settings(self, **changes: Any) -> Settings:
        """Change some settings (persisted by the daemon); the settings now in force."""
        body = {k: list(v) if isinstance(v, tuple) else v for k, v in changes.items()}
        from handoffd.config import Settings

        return Settings.from_mapping(
            await self.request("PATCH", "/v1/settings", body), strict=False
        )

    # ------------------------------------------------------------ events

    async def events(
        self, *, heartbeats: bool = False, app_id: str | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The daemon's event stream, one dict per event, until the daemon closes it.

        With ``app_id`` the app counts as connected while it listens: the daemon then leaves
        received sessions of that app to it (an ``inbox.received`` event) rather than launching
        a second copy. The first item, once the subscription exists, is a heartbeat (shown with
        ``heartbeats=True``): what happens after it is not missed."""
        params = None if app_id is None else {"app_id": app_id}
        async with contextlib.aclosing(self.stream_lines("/v1/events", params)) as lines:
            async for line in lines:
                try:
                    event = json.loads(line)
                except ValueError as exc:
                    raise ApiError(
                        "the daemon sent a malformed event", code="bad-response", status=0
                    ) from exc
                if not isinstance(event, dict):
                    continue
                if event.get("type") == "heartbeat" and not heartbeats:
                    continue
                yield event

    # ------------------------------------------------------------ handoffs (the handoff engine)

    async def send(
        self, session_id: str, target: str, *, types: Sequence[str] | None = None
    ) -> Handoff:
        """Start handing ``session_id`` to ``target`` (device id or name); only ``types`` if given."""
        body: dict[str, Any] = {"session_id": session_id, "target": target}
        if types is not None:
            body["types"] = list(types)
        return await self.request_as(Handoff, "POST", "/v1/handoffs", body)

    async def handoffs(self) -> list[Handoff]:
        """Handoffs in both directions, most recently updated first."""
        return list((await self.request_as(HandoffList, "GET", "/v1/handoffs")).handoffs)

    async def handoff(self, handoff_id: str) -> Handoff:
        """One handoff."""
        return await self.request_as(Handoff, "GET", f"/v1/handoffs/{handoff_id}")

    async def cancel(self, handoff_id: str) -> Handoff:
        """Cancel an outgoing handoff not yet delivered."""
        return await self.request_as(Handoff, "POST", f"/v1/handoffs/{handoff_id}/cancel", {})

    async def inbox(self) -> list[InboxEntry]:
        """Sessions received from other devices."""
        return list((await self.request_as(InboxList, "GET", "/v1/inbox")).inbox)

    async def inbox_entry(self, handoff_id: str) -> InboxEntry:
        """One received session (its items are files under the inbox)."""
        return await self.request_as(InboxEntry, "GET", f"/v1/inbox/{handoff_id}")

    async def confirm_resumed(self, handoff_id: str) -> InboxEntry:
        """Tell the daemon (and through it the source device) that the app resumed the session."""
        return await self.request_as(InboxEntry, "POST", f"/v1/inbox/{handoff_id}/resumed", {})

    # ------------------------------------------------------------ waiting (no event missed)

    async def wait_handoff(
        self,
        handoff_id: str,
        *,
        states: Iterable[str] = END_STATES,
    ) -> Handoff:
        """Wait until handoff ``handoff_id`` is in one of ``states`` (by default: delivered or
        ended) or can change no more (resumed, declined, cancelled, failed); the handoff then.

        It subscribes to the events before it reads the state, so a change that happens at
        once is not missed: ``await client.wait_handoff((await client.send(...)).id)`` is safe.
        It waits as long as it takes: bound it with ``asyncio.timeout``."""
        wanted = set(states) | set(FINAL_STATES)
        while True:
            async with contextlib.aclosing(self.events(heartbeats=True)) as events:
                await _subscribed(events)
                handoff = await self.handoff(handoff_id)
                if handoff.state in wanted:
                    return handoff
                async for event in events:
                    if event.get("handoff_id") == handoff_id and event.get("type") in (
                        "handoff.state",
                        "handoff.resumed",
                    ):
                        handoff = await self.handoff(handoff_id)
                        if handoff.state in wanted:
                            return handoff
            # The stream ended (this subscriber fell behind): subscribe again.

    async def next_received(
        self,
        *,
        app_id: str | None = None,
        since: float | None = None,
    ) -> InboxEntry:
        """The next session this device receives (of ``app_id`` if given), once it is in the
        inbox.

        It subscribes before it looks, so nothing received while it waits is missed; with
        ``since`` (a Unix time), a session already received at or after it is returned at
        once (call ``time.time()`` before the sender starts). With ``app_id`` the app counts
        as connected while it waits (see ``events``): the daemon does not launch it.
        It waits as long as it takes: bound it with ``asyncio.timeout``."""
        while True:
            async with contextlib.aclosing(self.events(heartbeats=True, app_id=app_id)) as events:
                started = time.time()
                await _subscribed(events)
                if since is not None:
                    entries = sorted(await self.inbox(), key=lambda e: e.received_at)
                    for entry in entries:
                        if entry.received_at >= since and app_id in (None, entry.app_id):
                            return entry
                async for event in events:
                    if event.get("type") == "handoff.received" and app_id in (
                        None,
                        event.get("app_id"),
                    ):
                        return await self.inbox_entry(str(event["handoff_id"]))
            # The stream ended (this subscriber fell behind): look again from when it began.
            since = started if since is None else since


async def _subscribed(events: AsyncGenerator[dict[str, Any], None]) -> None:
    """Wait for the stream's first heartbeat: from then on, no event is missed."""
    try:
        await anext(events)
    except StopAsyncIteration:
        raise HandoffError(
            "the daemon closed the event stream", code="daemon-disconnected"
        ) from None


def __getattr__(name: str) -> Any:
    """``Settings`` (from ``handoffd.config``) on first use: it imports the identity code."""
    if name == "Settings":
        from handoffd.config import Settings

        return Settings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
