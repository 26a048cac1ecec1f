"""The server's WebSocket messages as a device reads them (``/v1/ws`` and ``/v1/relay``), checked strictly.

Pure. Every reader returns a typed value or raises ``ServerError`` with code
``server-bad-response`` (or returns None where the device drops a malformed
message and carries on, as the server does with a device's).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from handoffd import identity
from handoffd.errors import ServerError
from handoffd.wire.auth import b64d

__all__ = [
    "MAX_SIGNAL",
    "RelayTicket",
    "bad_response",
    "json_message",
    "parse_online",
    "parse_relay_ticket",
    "parse_signal",
    "server_error",
]

MAX_SIGNAL = 256 * 1024
MAX_SESSION = 64
MAX_TOKEN = 128


@dataclass(frozen=True)
class RelayTicket:
    """A relay session this device may join once: ``peer`` is the other device."""

    session: str
    token: str
    peer: str
    expires_in: float
    initiator: bool


def bad_response(what: str) -> ServerError:
    """The error for anything malformed the server sent."""
    return ServerError(f"server sent a malformed {what}", code="server-bad-response")


def json_message(text: str, what: str) -> dict[str, Any]:
    """A text frame as a JSON object with a string ``type``; ``server-bad-response`` otherwise."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise bad_response(what) from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise bad_response(what)
    return data


def server_error(data: Mapping[str, Any]) -> ServerError:
    """The ``ServerError`` an ``error`` message reports (code and message bounded)."""
    error = data.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return ServerError(str(message or "server error")[:300], code=str(code or "server")[:64])


def parse_online(data: Mapping[str, Any]) -> frozenset[str] | None:
    """The online device ids of a ``welcome`` or ``presence`` message, None if malformed."""
    online = data.get("online")
    if isinstance(online, list) and all(isinstance(d, str) for d in online):
        return frozenset(online)
    return None


def parse_signal(data: Mapping[str, Any]) -> tuple[str, bytes] | None:
    """The sender and envelope of a ``signal`` message, None if malformed."""
    sender, payload = data.get("from"), data.get("data")
    if not isinstance(sender, str) or not isinstance(payload, str):
        return None
    try:
        return sender, b64d(payload, max_len=MAX_SIGNAL)
    except ValueError:
        return None


def parse_relay_ticket(data: Mapping[str, Any]) -> RelayTicket | None:
    """The ticket of a ``relay-ticket`` (ours, as initiator) or ``relay-offer`` message, None if malformed."""
    session, token, expires = data.get("session"), data.get("token"), data.get("expires_in")
    initiator = data.get("type") == "relay-ticket"
    peer = data.get("to" if initiator else "from")
    if not (
        isinstance(session, str)
        and 0 < len(session) <= MAX_SESSION
        and isinstance(token, str)
        and 0 < len(token) <= MAX_TOKEN
        and isinstance(peer, str)
        and identity.is_device_id(peer)
        and isinstance(expires, (int, float))
        and not isinstance(expires, bool)
    ):
        return None
    return RelayTicket(session, token, peer, float(expires), initiator)
