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

import json
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

import aiohttp

from handoffd.config import Settings
from handoffd.control.client_results import (
    App,
    Device,
    Handoff,
    InboxEntry,
    InboxItem,
    Invite,
    Peer,
    Session,
    Status,
    device_from_json,
    handoff_from_json,
    inbox_entry_from_json,
    items_json,
    session_from_json,
    status_from_json,
)
from handoffd.control.client_transport import (
    MAX_EVENT_LINE,
    ControlTransport,
    DaemonNotRunning,
    decode_answer,
    read_bounded,
)
from handoffd.errors import ApiError
from handoffd.items import Item

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
    "Settings",
    "Status",
]


class HandoffClient(ControlTransport):
    """Async client of one daemon's control API (``socket`` path, or the socket of ``home``)."""

    # ------------------------------------------------------------ device

    async def status(self) -> Status:
        """Device id and name, account, paired?, server reachable?, handoff enabled?, version."""
        return status_from_json(await self.request("GET", "/v1/status"))

    async def devices(self) -> list[Device]:
        """The account's devices (from the server when reachable, else the local cache)."""
        result = await self.request("GET", "/v1/devices")
        return [device_from_json(d) for d in result["devices"]]

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
        return status_from_json(await self.request("POST", "/v1/pair", body))

    async def create_invite(self) -> Invite:
        """A new single-use invite to this device's account (URL, code, expiry, QR as SVG)."""
        d = await self.request("POST", "/v1/invites", {})
        return Invite(
            url=d["url"],
            code=d["code"],
            expires_at=d["expires_at"],
            qr_svg=d["qr_svg"],
            page_url=d.get("page_url"),
        )

    async def revoke(self, device_id: str) -> Device:
        """Revoke a device of the account through the server; the device as now known."""
        return device_from_json(
            (await self.request("DELETE", f"/v1/devices/{device_id}"))["device"]
        )

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
        return session_from_json(await self.request("POST", "/v1/sessions", body))

    async def sessions(self, *, include_withdrawn: bool = False) -> list[Session]:
        """Published sessions (items without their content)."""
        params = {"state": "all"} if include_withdrawn else None
        result = await self.request("GET", "/v1/sessions", params=params)
        return [session_from_json(s) for s in result["sessions"]]

    async def session(self, session_id: str) -> Session:
        """One session with its items' text and data."""
        return session_from_json(await self.request("GET", f"/v1/sessions/{session_id}"))

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
        return session_from_json(await self.request("PUT", f"/v1/sessions/{session_id}", body))

    async def withdraw(self, session_id: str) -> Session:
        """Withdraw a session: it can no longer be handed off; its stored content is dropped."""
        return session_from_json(await self.request("DELETE", f"/v1/sessions/{session_id}"))

    # ------------------------------------------------------------ apps and settings

    async def register_app(self, app_id: str, launch: Sequence[str]) -> App:
        """Register (or replace) the argv that launches ``app_id`` to resume a session."""
        d = await self.request("POST", "/v1/apps", {"app_id": app_id, "launch": list(launch)})
        return App(app_id=d["app_id"], launch=tuple(d["launch"]))

    async def apps(self) -> list[App]:
        """Registered apps."""
        result = await self.request("GET", "/v1/apps")
        return [App(app_id=a["app_id"], launch=tuple(a["launch"])) for a in result["apps"]]

    async def settings(self) -> Settings:
        """Current settings."""
        return Settings.from_mapping(await self.request("GET", "/v1/settings"), strict=False)

    async def update_settings(self, **changes: Any) -> Settings:
        """Change some settings (persisted by the daemon); the settings now in force."""
        body = {k: list(v) if isinstance(v, tuple) else v for k, v in changes.items()}
        return Settings.from_mapping(
            await self.request("PATCH", "/v1/settings", body), strict=False
        )

    # ------------------------------------------------------------ events

    async def events(self, *, heartbeats: bool = False) -> AsyncGenerator[dict[str, Any], None]:
        """The daemon's event stream, one dict per event, until the daemon closes it."""
        session = self._get_session()
        try:
            resp = await session.get(
                "/v1/events", timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout)
            )
        except (aiohttp.ClientConnectorError, FileNotFoundError, ConnectionRefusedError) as exc:
            raise self._not_running(exc) from None
        async with resp:
            if resp.status >= 400:
                decode_answer(resp.status, await read_bounded(resp))
            while True:
                try:
                    line = await resp.content.readuntil(b"\n")
                except ValueError as exc:
                    raise ApiError("event line too long", code="bad-response", status=0) from exc
                except aiohttp.ClientPayloadError:
                    return
                if not line:
                    return
                if len(line) > MAX_EVENT_LINE:
                    raise ApiError("event line too long", code="bad-response", status=0)
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
        return handoff_from_json(await self.request("POST", "/v1/handoffs", body))

    async def handoffs(self) -> list[Handoff]:
        """Handoffs in both directions, most recently updated first."""
        result = await self.request("GET", "/v1/handoffs")
        return [handoff_from_json(h) for h in result["handoffs"]]

    async def handoff(self, handoff_id: str) -> Handoff:
        """One handoff."""
        return handoff_from_json(await self.request("GET", f"/v1/handoffs/{handoff_id}"))

    async def cancel(self, handoff_id: str) -> Handoff:
        """Cancel an outgoing handoff not yet delivered."""
        return handoff_from_json(
            await self.request("POST", f"/v1/handoffs/{handoff_id}/cancel", {})
        )

    async def inbox(self) -> list[InboxEntry]:
        """Sessions received from other devices."""
        result = await self.request("GET", "/v1/inbox")
        return [inbox_entry_from_json(e) for e in result["inbox"]]

    async def inbox_entry(self, handoff_id: str) -> InboxEntry:
        """One received session (its items are files under the inbox)."""
        return inbox_entry_from_json(await self.request("GET", f"/v1/inbox/{handoff_id}"))

    async def confirm_resumed(self, handoff_id: str) -> InboxEntry:
        """Tell the daemon (and through it the source device) that the app resumed the session."""
        return inbox_entry_from_json(
            await self.request("POST", f"/v1/inbox/{handoff_id}/resumed", {})
        )
