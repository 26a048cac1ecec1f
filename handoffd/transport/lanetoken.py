"""The LAN lane's single-use tokens and the first frame that carries one (pure).

The target of a handoff issues a token bound to the handoff and to both device ids, and
offers it with its lane address inside the already-authenticated exchange (the transfer
protocol's ``lane`` message). The sender presents it as the first frame inside the lane's
mutually authenticated TLS: ``{"lane": 1, "handoff": <id>, "to": <target device id>,
"token": <hex>}``. The target redeems it once: whatever the outcome, a token is never
accepted again.
"""

from __future__ import annotations

import collections
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from handoffd import identity
from handoffd.transport.base import PeerAuthError

__all__ = [
    "MAX_FIRST",
    "TOKEN_BYTES",
    "LaneTicket",
    "LaneTokens",
    "encode_first",
    "parse_first",
]

TOKEN_BYTES = 16
MAX_FIRST = 512
TOKEN_TTL = 60.0
"""Seconds a token may wait to be redeemed."""
MAX_LIVE = 256
"""Tokens issued and not yet redeemed or expired, at most (the oldest is dropped)."""
MAX_SPENT = 1024
"""Redeemed tokens remembered (to name a reuse as such) at most."""
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_HEX_RE = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class LaneTicket:
    """What the sender presents: the handoff, the target it means, the token."""

    handoff_id: str
    to_device: str
    token: bytes


def encode_first(ticket: LaneTicket) -> bytes:
    """The first frame the lane's TLS client sends."""
    body = {
        "handoff": ticket.handoff_id,
        "lane": 1,
        "to": ticket.to_device,
        "token": ticket.token.hex(),
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode("ascii")


def parse_first(data: bytes) -> LaneTicket:
    """The ticket in a first frame; PeerAuthError(lane-ticket-malformed) unless exactly one."""
    try:
        if len(data) > MAX_FIRST:
            raise ValueError("too long")
        body = json.loads(data)
        if not isinstance(body, dict) or set(body) != {"handoff", "lane", "to", "token"}:
            raise ValueError("wrong keys")
        hid, to, token = body["handoff"], body["to"], body["token"]
        if body["lane"] != 1 or body["lane"] is True:
            raise ValueError("wrong version")
        if not (isinstance(hid, str) and _ID_RE.fullmatch(hid)):
            raise ValueError("bad handoff id")
        if not (isinstance(to, str) and identity.is_device_id(to)):
            raise ValueError("bad device id")
        if not (isinstance(token, str) and _HEX_RE.fullmatch(token)):
            raise ValueError("bad token")
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise PeerAuthError("malformed lane ticket", code="lane-ticket-malformed") from None
    return LaneTicket(hid, to, bytes.fromhex(token))


@dataclass(frozen=True, slots=True)
class _Grant:
    handoff_id: str
    peer: str
    expires: float


class LaneTokens:
    """Tokens this device issued for its lane: each bound to a handoff and a peer, used once."""

    def __init__(
        self, device_id: str, *, ttl: float = TOKEN_TTL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.device_id = device_id
        self._ttl = ttl
        self._clock = clock
        self._live: collections.OrderedDict[bytes, _Grant] = collections.OrderedDict()
        self._spent: collections.OrderedDict[bytes, None] = collections.OrderedDict()

    def issue(self, handoff_id: str, peer: str) -> bytes:
        """A fresh token for ``peer`` to open the lane for ``handoff_id``."""
        self._prune()
        token = secrets.token_bytes(TOKEN_BYTES)
        self._live[token] = _Grant(handoff_id, peer, self._clock() + self._ttl)
        while len(self._live) > MAX_LIVE:
            self._live.popitem(last=False)
        return token

    def redeem(self, peer: identity.PeerIdentity, first: bytes) -> str:
        """Check the first frame of ``peer``'s lane connection; the handoff id, or PeerAuthError.

        Codes: ``lane-ticket-malformed``, ``lane-wrong-target``, ``lane-token-reused``,
        ``lane-token-unknown``, ``lane-token-expired``, ``lane-token-mismatch`` (another
        handoff or another device than it was issued for).
        """
        ticket = parse_first(first)
        if ticket.to_device != self.device_id:
            raise PeerAuthError("the ticket names another device", code="lane-wrong-target")
        token = ticket.token
        if token in self._spent:
            raise PeerAuthError("the lane token was already used", code="lane-token-reused")
        grant = self._live.pop(token, None)
        if grant is None:
            raise PeerAuthError("no such lane token", code="lane-token-unknown")
        self._spent[token] = None
        while len(self._spent) > MAX_SPENT:
            self._spent.popitem(last=False)
        if grant.expires <= self._clock():
            raise PeerAuthError("the lane token expired", code="lane-token-expired")
        if grant.handoff_id != ticket.handoff_id or grant.peer != peer.device_id:
            raise PeerAuthError(
                "the lane token was issued for another handoff or device",
                code="lane-token-mismatch",
            )
        return grant.handoff_id

    def _prune(self) -> None:
        now = self._clock()
        for token, grant in list(self._live.items()):
            if grant.expires <= now:
                del self._live[token]
