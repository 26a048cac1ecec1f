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
import os
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from handoffd.config import Settings
from handoffd.control.connector import OwnSocketConnector
from handoffd.errors import ApiError, HandoffError
from handoffd.items import Item
from handoffd.paths import Paths

__all__ = [
    "App",
    "DaemonNotRunning",
    "Device",
    "HandoffClient",
    "Invite",
    "Item",
    "Session",
    "Settings",
    "Status",
]

MAX_RESPONSE = 64 * 1024 * 1024
MAX_EVENT_LINE = 1024 * 1024
BASE_URL = "http://handoff"


class DaemonNotRunning(HandoffError):  # noqa: N818 - the name is the API
    """Nothing answers on the control socket: the daemon is not running (for this home)."""

    default_code = "daemon-not-running"


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


def _status(d: Mapping[str, Any]) -> Status:
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


def _device(d: Mapping[str, Any]) -> Device:
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


def _session(d: Mapping[str, Any]) -> Session:
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


def _items_json(items: Sequence[Item | Mapping[str, Any]]) -> list[Any]:
    return [i.to_request() if isinstance(i, Item) else dict(i) for i in items]


# ---------------------------------------------------------------- the client


class HandoffClient:
    """Async client of one daemon's control API (``socket`` path, or the socket of ``home``)."""

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        *,
        home: str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.socket_path = (
            Path(socket) if socket is not None else Paths.resolve(home).control_socket
        )
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def __aenter__(self) -> HandoffClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool (idempotent)."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise HandoffError("client is closed", code="client-closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                base_url=BASE_URL,
                connector=OwnSocketConnector(path=os.fspath(self.socket_path)),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            )
        return self._session

    def _not_running(self, exc: BaseException) -> HandoffError:
        if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(
            exc.os_error, PermissionError
        ):
            return HandoffError(
                f"no permission to use the control socket {self.socket_path}: "
                "it belongs to another user",
                code="daemon-permission-denied",
            )
        return DaemonNotRunning(
            f"handoffd is not running (nothing listens on {self.socket_path}); "
            "start it with `handoffd` (add --home DIR if you use one) "
            "or install the service with `handoff service install`"
        )

    async def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """One request; the decoded JSON answer; ApiError with the daemon's code on an error."""
        session = self._get_session()
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"} if data is not None else None
        try:
            async with session.request(
                method, path, data=data, headers=headers, params=params
            ) as resp:
                payload = await _read_bounded(resp)
                return _decode(resp.status, payload)
        except (aiohttp.ClientConnectorError, FileNotFoundError, ConnectionRefusedError) as exc:
            raise self._not_running(exc) from None
        except aiohttp.ServerDisconnectedError as exc:
            raise HandoffError(
                "the daemon closed the connection", code="daemon-disconnected"
            ) from exc

    # ------------------------------------------------------------ device

    async def status(self) -> Status:
        """Device id and name, account, paired?, server reachable?, handoff enabled?, version."""
        return _status(await self.request("GET", "/v1/status"))

    async def devices(self) -> list[Device]:
        """The account's devices (from the server when reachable, else the local cache)."""
        result = await self.request("GET", "/v1/devices")
        return [_device(d) for d in result["devices"]]

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
        return _status(await self.request("POST", "/v1/pair", body))

    async def create_invite(self) -> Invite:
        """A new single-use invite to this device's account (URL, code, expiry, QR as SVG)."""
        d = await self.request("POST", "/v1/invites", {})
        return Invite(url=d["url"], code=d["code"], expires_at=d["expires_at"], qr_svg=d["qr_svg"])

    async def revoke(self, device_id: str) -> Device:
        """Revoke a device of the account through the server; the device as now known."""
        return _device((await self.request("DELETE", f"/v1/devices/{device_id}"))["device"])

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
            "items": _items_json(items),
        }
        return _session(await self.request("POST", "/v1/sessions", body))

    async def sessions(self, *, include_withdrawn: bool = False) -> list[Session]:
        """Published sessions (items without their content)."""
        params = {"state": "all"} if include_withdrawn else None
        result = await self.request("GET", "/v1/sessions", params=params)
        return [_session(s) for s in result["sessions"]]

    async def session(self, session_id: str) -> Session:
        """One session with its items' text and data."""
        return _session(await self.request("GET", f"/v1/sessions/{session_id}"))

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
            body["items"] = _items_json(items)
        return _session(await self.request("PUT", f"/v1/sessions/{session_id}", body))

    async def withdraw(self, session_id: str) -> Session:
        """Withdraw a session: it can no longer be handed off; its stored content is dropped."""
        return _session(await self.request("DELETE", f"/v1/sessions/{session_id}"))

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
                _decode(resp.status, await _read_bounded(resp))
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
        return _handoff(await self.request("POST", "/v1/handoffs", body))

    async def handoffs(self) -> list[Handoff]:
        """Handoffs in both directions, most recently updated first."""
        result = await self.request("GET", "/v1/handoffs")
        return [_handoff(h) for h in result["handoffs"]]

    async def handoff(self, handoff_id: str) -> Handoff:
        """One handoff."""
        return _handoff(await self.request("GET", f"/v1/handoffs/{handoff_id}"))

    async def cancel(self, handoff_id: str) -> Handoff:
        """Cancel an outgoing handoff not yet delivered."""
        return _handoff(await self.request("POST", f"/v1/handoffs/{handoff_id}/cancel", {}))

    async def inbox(self) -> list[InboxEntry]:
        """Sessions received from other devices."""
        result = await self.request("GET", "/v1/inbox")
        return [_inbox_entry(e) for e in result["inbox"]]

    async def inbox_entry(self, handoff_id: str) -> InboxEntry:
        """One received session (its items are files under the inbox)."""
        return _inbox_entry(await self.request("GET", f"/v1/inbox/{handoff_id}"))

    async def confirm_resumed(self, handoff_id: str) -> InboxEntry:
        """Tell the daemon (and through it the source device) that the app resumed the session."""
        return _inbox_entry(await self.request("POST", f"/v1/inbox/{handoff_id}/resumed", {}))


async def _read_bounded(resp: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(256 * 1024):
        size += len(chunk)
        if size > MAX_RESPONSE:
            raise ApiError("response too large", code="bad-response", status=resp.status)
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(status: int, payload: bytes) -> Any:
    try:
        result = json.loads(payload) if payload else None
    except ValueError:
        result = None
    if status >= 400:
        error = result.get("error") if isinstance(result, dict) else None
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            raise ApiError(str(error.get("message", "")), code=error["code"], status=status)
        raise ApiError(f"the daemon answered HTTP {status}", code="bad-response", status=status)
    if result is None and payload:
        raise ApiError("the daemon sent malformed JSON", code="bad-response", status=status)
    return result


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


def _peer(d: Mapping[str, Any]) -> Peer:
    return Peer(device_id=d["device_id"], name=d.get("name", ""))


def _handoff(d: Mapping[str, Any]) -> Handoff:
    return Handoff(
        id=d["id"],
        direction=d["direction"],
        session_id=d.get("session_id"),
        peer=_peer(d["peer"]),
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


def _inbox_entry(d: Mapping[str, Any]) -> InboxEntry:
    return InboxEntry(
        id=d["id"],
        session_id=d["session_id"],
        app_id=d["app_id"],
        title=d["title"],
        context=d["context"],
        sender=_peer(d["from"]),
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
