"""The device's link to handoff-server (aiohttp only here, device side).

- ``client``: ``ServerClient``, the HTTP API (join, renew, CRL, invites, devices, ICE);
- ``http``: the pinned TLS, signed requests and bounded answers under it;
- ``records``: the answers, checked before use;
- ``session``: ``ServerLink``, the WebSocket (presence, signals, relay tickets);
- ``relaystream``: joining a relay session and its byte stream.

What is spoken on the wire is ``handoffd.wire``, shared with the server.
"""

from __future__ import annotations

from handoffd.serverlink.client import ServerClient
from handoffd.serverlink.records import CreatedInvite, DeviceRecord, IceServerInfo, JoinResult
from handoffd.serverlink.relaystream import RelayStream
from handoffd.serverlink.session import ServerLink
from handoffd.wire.invite import Invite, parse_invite
from handoffd.wire.messages import RelayTicket

__all__ = [
    "CreatedInvite",
    "DeviceRecord",
    "IceServerInfo",
    "Invite",
    "JoinResult",
    "RelayStream",
    "RelayTicket",
    "ServerClient",
    "ServerLink",
    "parse_invite",
]
