"""The control API's answer models (with ``models``, the one schema): what the daemon answers
and the SDK returns, frozen msgspec structs that ignore unknown fields (a newer daemon may add
some). ``App`` is also the body of ``POST /v1/apps``."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, UnsetType

from handoffd.control.body import Check
from handoffd.control.everyday_settings import EverydaySettings
from handoffd.control.fieldchecks import check_launch
from handoffd.control.limits import MAX_ARGV
from handoffd.control.models import HANDOFF_STATES, SESSION_STATES, AppId


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """An answer: unknown fields are ignored (a newer daemon may add some)."""

    @property
    def raw(self) -> dict[str, Any]:
        """The answer as plain JSON values (its modelled fields)."""
        raw: dict[str, Any] = msgspec.to_builtins(self)
        return raw


class App(Answer, frozen=True, forbid_unknown_fields=True):
    """How to launch an app to resume a session (``POST /v1/apps`` takes and answers it)."""

    app_id: AppId
    launch: Annotated[tuple[str, ...], Meta(min_length=1, max_length=MAX_ARGV), Check(check_launch)]


class AppList(Answer, frozen=True):
    """``GET /v1/apps``."""

    apps: tuple[App, ...]


class ErrorBody(Answer, frozen=True):
    """What went wrong: a stable ``code`` (docs/control-api.md) and a message for humans."""

    code: str
    message: str


class Error(Answer, frozen=True):
    """Every error answer."""

    error: ErrorBody


class Refusal(Answer, frozen=True):
    """A connection this device refused (coalesced per path and code: count, the newest at)."""

    at: float
    code: str
    path: str
    count: int | UnsetType = UNSET


class Status(Answer, frozen=True, kw_only=True):
    """``GET /v1/status``: this device and its daemon."""

    device_id: str
    device_id_display: str
    device_name: str
    paired: bool
    account_id: str | None
    account_name: str | None = None
    server_url: str | None
    server_reachable: bool | None = None
    handoff_enabled: bool
    cert_not_after: float | None = None
    crl_number: int = 0
    revoked: bool = False
    server_connected: bool = False
    refused: Annotated[
        tuple[Refusal, ...], Meta(description="the last connections refused, newest last")
    ] = ()
    version: str
    pid: int = 0


class Device(Answer, frozen=True, kw_only=True):
    """One device of the account (``GET /v1/devices``), as this device sees it."""

    device_id: str
    name: str
    platform: str
    self: bool
    nearby: bool = False
    online: bool | None = None
    addresses: tuple[str, ...] = ()
    last_seen: float | None = None
    revoked: bool


class DeviceList(Answer, frozen=True):
    """``GET /v1/devices``: ``source`` server, cache (then ``server_error`` says why) or local."""

    devices: tuple[Device, ...]
    source: Annotated[str, Meta(extra_json_schema={"enum": ["server", "cache", "local"]})]
    server_error: str | UnsetType | None = UNSET


class RevokedDevice(Answer, frozen=True):
    """``DELETE /v1/devices/{id}``."""

    device: Device


class Invite(Answer, frozen=True):
    """An invite made by this device (``POST /v1/invites``)."""

    url: str
    code: str
    expires_at: float
    qr_svg: str
    page_url: (
        Annotated[
            str, Meta(description="the browser pairing page for this invite: what the QR holds")
        ]
        | None
    ) = None


class SessionItem(Answer, frozen=True):
    """An item as a session shows it; content (``text``/``data``) only in single-session views,
    ``available`` (path items, re-checked now) only there too."""

    type: str
    name: str
    mime: str
    size: int
    source: Annotated[str, Meta(extra_json_schema={"enum": ["text", "data", "path"]})]
    text: str | None = None
    data: bytes | None = msgspec.field(default=None, name="data_base64")
    path: str | None = None
    available: bool | None = None


class Session(Answer, frozen=True):
    """A session an app published (``/v1/sessions``)."""

    id: str
    app_id: str
    title: str
    context: dict[str, Any]
    items: tuple[SessionItem, ...]
    state: Annotated[str, Meta(extra_json_schema={"enum": list(SESSION_STATES)})]
    created_at: float
    updated_at: float


class SessionList(Answer, frozen=True):
    """``GET /v1/sessions``."""

    sessions: tuple[Session, ...]


class SettingsFields(Answer, EverydaySettings, frozen=True):
    """The settings (``GET``/``PATCH /v1/settings``; a PATCH body gives any of them).

    Checked by ``handoffd.config`` (codes ``setting-unknown``, ``setting-invalid``)."""

    handoff_enabled: bool | UnsetType = UNSET
    accept_types: (
        Annotated[tuple[str, ...], Meta(description='["*"] accepts every type')] | UnsetType
    ) = UNSET
    auto_accept: bool | UnsetType = UNSET
    device_name: Annotated[str, Meta(min_length=1, max_length=64)] | UnsetType = UNSET
    inbox_ttl: Annotated[int, Meta(ge=60)] | UnsetType = UNSET
    partial_ttl: Annotated[int, Meta(ge=60)] | UnsetType = UNSET
    unicast_peers: Annotated[tuple[str, ...], Meta(description="HOST:PORT")] | UnsetType = UNSET
    lan_discovery: (
        Annotated[
            bool, Meta(description="advertise and browse with mDNS (off: peers via the server)")
        ]
        | UnsetType
    ) = UNSET


class Event(Answer, frozen=True):
    """One line of ``GET /v1/events``; events carry more fields by type."""

    type: str
    ts: float | UnsetType = UNSET
    seq: int | UnsetType = UNSET


class Peer(Answer, frozen=True):
    """The other device of a handoff."""

    device_id: str
    name: str = ""


class Wire(Answer, frozen=True):
    """What crossed the wire (sender side)."""

    data_bytes_sent: int = 0
    channel_bytes_sent: int = 0
    bytes_already_held: int = 0


HandoffErrorInfo = Annotated[
    dict[str, str],
    Meta(
        extra_json_schema={
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "reason": {
                    "type": "string",
                    "description": "the reason the peer gave for refusing us",
                },
            },
            "required": ["code", "message"],
        }
    ),
]


class Handoff(Answer, frozen=True, kw_only=True):
    """A handoff (``/v1/handoffs``); ``error`` is ``{code, message, reason?}``."""

    id: str
    direction: Annotated[str, Meta(extra_json_schema={"enum": ["out", "in"]})]
    session_id: str | None = None
    peer: Peer
    state: Annotated[str, Meta(extra_json_schema={"enum": list(HANDOFF_STATES)})]
    path: (
        Annotated[
            str,
            Meta(
                description="direct, relay or lane, once connected",
                extra_json_schema={"enum": ["direct", "relay", "lane"]},
            ),
        ]
        | None
    ) = None
    types: tuple[str, ...] = ()
    bytes_done: int
    bytes_total: int
    attempts: int
    next_retry_at: float | None = None
    kept_in_inbox: Annotated[
        bool,
        Meta(
            description="sender side: the target said it keeps the session in its inbox "
            "for its person (no app will resume it)"
        ),
    ] = False
    waiting_until: (
        Annotated[
            float,
            Meta(
                description="waiting-for-device: the handoff fails if the device is not online by then"
            ),
        ]
        | None
    ) = None
    error: HandoffErrorInfo | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    wire: Wire | UnsetType = UNSET


class HandoffList(Answer, frozen=True):
    """``GET /v1/handoffs``: both directions, most recently updated first."""

    handoffs: tuple[Handoff, ...]


# A frozen dataclass (msgspec decodes those too), as before the models: callers use
# dataclasses.asdict on it.
@dataclasses.dataclass(frozen=True, slots=True)
class InboxItem:
    """A received item: a file at ``path`` inside the inbox."""

    type: str
    name: str
    mime: str
    size: int
    sha256: Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]
    path: Annotated[str, Meta(description="absolute, inside inbox/<id>/")]

    @property
    def raw(self) -> dict[str, Any]:
        """The item as plain JSON values."""
        return dataclasses.asdict(self)


class InboxEntry(Answer, frozen=True, kw_only=True):
    """A received session (``/v1/inbox``); ``state``: received or resumed."""

    id: str
    session_id: str
    app_id: str
    title: str
    context: dict[str, Any]
    sender: Peer = msgspec.field(name="from")
    items: tuple[InboxItem, ...]
    state: str
    received_at: float
    resumed_at: float | None = None


class InboxList(Answer, frozen=True):
    """``GET /v1/inbox``."""

    inbox: tuple[InboxEntry, ...]
