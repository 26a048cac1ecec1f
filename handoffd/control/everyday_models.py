"""The control API's models of everyday handoff (with ``models`` and ``answers``, the one
schema): the body of ``POST /v1/send``, the open questions of consent (``Asking``,
``/v1/asking``) and the answer of ``POST /v1/unpair``."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, UnsetType

from handoffd.control.answers import Answer, Peer, Status
from handoffd.control.body import Check, request_fields, string
from handoffd.control.body import api_error as _err
from handoffd.control.limits import MAX_ITEMS, MAX_PATH
from handoffd.control.models import Request
from handoffd.handoff.sendables import MAX_SEND_TEXT, MAX_URL

SEND_KINDS = ("paths", "text", "url", "clipboard")
MAX_TEXT_FIELD = 2 * MAX_SEND_TEXT  # the byte limit is checked on the UTF-8 form


def check_paths(value: Any, where: str) -> list[str]:
    """A non-empty list of at most ``MAX_ITEMS`` paths (absolute: checked when they are read)."""
    if not isinstance(value, list) or not value:
        raise _err("wrong-type", f"{where} must be a non-empty list of absolute paths")
    if len(value) > MAX_ITEMS:
        raise _err("too-many-files", f"{where}: at most {MAX_ITEMS} paths")
    return [string(MAX_PATH)(v, f"{where}[]") for v in value]


SendText = Annotated[str, Check(string(MAX_TEXT_FIELD, min_len=0))]


class SendIn(Request, frozen=True):
    """``POST /v1/send``: exactly one of paths, text, url, clipboard."""

    target: Annotated[
        str, Meta(min_length=1, max_length=128, description="device id or device name")
    ]
    paths: (
        Annotated[
            list[Annotated[str, Meta(max_length=MAX_PATH)]],
            Meta(
                min_length=1,
                max_length=MAX_ITEMS,
                description="absolute paths of files and folders (walked)",
            ),
            Check(check_paths),
        ]
        | UnsetType
    ) = UNSET
    text: SendText | UnsetType = UNSET
    url: (
        Annotated[str, Meta(pattern="^[Hh][Tt][Tt][Pp][Ss]?://"), Check(string(MAX_URL + 1))]
        | UnsetType
    ) = UNSET
    clipboard: SendText | UnsetType = UNSET


def send_request(body: Any) -> tuple[str, str, Any]:
    """A ``SendIn`` body → (target, kind, value); ``send-what`` unless exactly one kind."""
    f = request_fields(SendIn, body, "send")
    given = [k for k in SEND_KINDS if k in f]
    if len(given) != 1:
        raise _err("send-what", "send needs exactly one of paths, text, url or clipboard")
    return f["target"], given[0], f[given[0]]


class Asking(Answer, frozen=True, kw_only=True):
    """An offer waiting for its person's Accept / Decline (``/v1/asking``)."""

    id: str
    app_id: str
    title: str
    sender: Peer = msgspec.field(name="from")
    items: int
    size: int
    state: Annotated[str, Meta(extra_json_schema={"enum": ["asking"]})]
    asked_at: float
    deadline: Annotated[float, Meta(description="declined if not answered by then")]


class AskingList(Answer, frozen=True):
    """``GET /v1/asking``: the open questions, oldest first."""

    asking: tuple[Asking, ...]


class Unpaired(Status, frozen=True, kw_only=True):
    """``POST /v1/unpair``: the status now, and whether the server revoked this device."""

    revoked_at_server: Annotated[
        bool, Meta(description="false: the server could not be reached (revoke it from elsewhere)")
    ]
