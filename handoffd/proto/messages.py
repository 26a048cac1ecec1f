"""The transfer protocol's messages (see docs/protocol.md).

Every message sent on a channel encodes to at most ``WIRE_MAX`` bytes (one
data-channel message). ``Manifest`` and ``Offer`` are never sent alone: the
manifest's encoding is what the sender signs, inside an ``Offer``; the
encoded offer travels split into ``OfferPart`` messages.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Annotated

from handoffd.proto import codec
from handoffd.proto.schema import INT_MAX, UINT_MAX, Max, Min, Range, message, record

PROTOCOL_VERSION = 1
WIRE_MAX = 64 * 1024
"""Largest message on a channel (aiortc's interoperable data-channel message)."""
MAX_CHUNK = 60 * 1024
"""Payload bytes in one Data or OfferPart message: the whole message stays under WIRE_MAX."""
MAX_ITEMS = 1024
MAX_CONTEXT = 64 * 1024
MAX_CRL = 56 * 1024
"""Largest CRL a Hello gossips (a bigger one is not sent: the peer fetches its own)."""
MAX_OFFER = 1024 * 1024
"""Largest encoded Offer."""
MAX_OFFER_PARTS = -(-MAX_OFFER // MAX_CHUNK)
MIN_WINDOW = MAX_CHUNK
MAX_WINDOW = 1024 * 1024 * 1024
DEFAULT_WINDOW = 4 * 1024 * 1024
Window = Annotated[int, Range(MIN_WINDOW, MAX_WINDOW)]
"""Flow control: item bytes sent but not yet acknowledged as durable."""

Id = Annotated[str, Max(64)]
Word = Annotated[str, Max(64)]
Name = Annotated[str, Max(255)]
Feature = Annotated[str, Max(32)]
Text = Annotated[str, Max(1024)]
Count = Annotated[int, Range(0, INT_MAX)]
"""A byte count, offset or sequence number: never negative."""
Index = Annotated[int, Range(0, MAX_ITEMS - 1)]
Nonce = Annotated[int, Range(0, UINT_MAX)]
Host = Annotated[str, Min(2), Max(45)]
"""An IP address literal (checked by the lane dialer)."""
FEATURE_LANE = "lane"
"""Hello feature: this device takes (sender) or offers (receiver) the LAN lane."""
FEATURE_LANE_EARLY = "lane-early"
"""Hello feature (sender): the receiver may send its ``lane`` just before its ``accept``, so
the lane is dialled before any bulk goes on the first channel."""


@message("hello")
@dataclass(frozen=True, slots=True)
class Hello:
    """First message each way: protocol version, who we are, our CRL (gossip), our window.

    The transfer core fills in ``window`` (its own flow-control limit).
    """

    version: Count
    device_id: Id
    crl_number: Count
    crl: Annotated[bytes, Max(MAX_CRL)] | None
    features: Annotated[tuple[Feature, ...], Max(16)]
    window: Window = DEFAULT_WINDOW


@record
@dataclass(frozen=True, slots=True)
class ItemEntry:
    """One item of a manifest: its bytes are ``size`` long and hash to ``sha256``."""

    index: Index
    type: Word
    name: Name
    mime: Name
    size: Count
    sha256: Annotated[bytes, Min(32), Max(32)]


@message("manifest")
@dataclass(frozen=True, slots=True)
class Manifest:
    """What the sender offers; its encoding is the exact bytes the sender signs."""

    handoff_id: Id
    session_id: Id
    app_id: Name
    title: Text
    context: Annotated[bytes, Max(MAX_CONTEXT)]
    items: Annotated[tuple[ItemEntry, ...], Max(MAX_ITEMS)]
    sender: Id
    recipient: Id
    created_ms: int


@message("offer")
@dataclass(frozen=True, slots=True)
class Offer:
    """A signed manifest: the encoded Manifest, the sender's Ed25519 signature and certificate."""

    manifest: Annotated[bytes, Max(MAX_OFFER - 16 * 1024)]
    signature: Annotated[bytes, Min(64), Max(64)]
    cert: Annotated[bytes, Max(8 * 1024)]


SignedManifest = Offer


@message("offer-part")
@dataclass(frozen=True, slots=True)
class OfferPart:
    """Part ``seq`` of ``count`` of an encoded Offer, sent in order."""

    handoff_id: Id
    seq: Annotated[int, Range(0, MAX_OFFER_PARTS - 1)]
    count: Annotated[int, Range(1, MAX_OFFER_PARTS)]
    data: Annotated[bytes, Min(1), Max(MAX_CHUNK)]


@record
@dataclass(frozen=True, slots=True)
class Resume:
    """Where an accepted item continues: the bytes the receiver holds durably."""

    index: Index
    offset: Count


@message("accept")
@dataclass(frozen=True, slots=True)
class Accept:
    """The receiver takes these items from these offsets; at most ``window`` bytes unacknowledged."""

    handoff_id: Id
    items: Annotated[tuple[Resume, ...], Min(1), Max(MAX_ITEMS)]
    window: Window


@message("decline")
@dataclass(frozen=True, slots=True)
class Decline:
    """The receiver refuses the handoff (``reason`` is a stable code)."""

    handoff_id: Id
    reason: Word
    message: Text


@message("data")
@dataclass(frozen=True, slots=True)
class Data:
    """Bytes of item ``index`` starting at ``offset``."""

    handoff_id: Id
    index: Index
    offset: Count
    data: Annotated[bytes, Min(1), Max(MAX_CHUNK)]


@message("ack")
@dataclass(frozen=True, slots=True)
class Ack:
    """The receiver holds item ``index`` durably up to ``offset``."""

    handoff_id: Id
    index: Index
    offset: Count


@message("delivered")
@dataclass(frozen=True, slots=True)
class Delivered:
    """Every accepted item is verified and committed to the receiver's inbox."""

    handoff_id: Id


@message("resumed")
@dataclass(frozen=True, slots=True)
class Resumed:
    """The app on the receiver picked the session up."""

    handoff_id: Id


@message("cancel")
@dataclass(frozen=True, slots=True)
class Cancel:
    """Either side gives the handoff up."""

    handoff_id: Id
    reason: Word


@message("error")
@dataclass(frozen=True, slots=True)
class Error:
    """A protocol error (``code`` as in ProtocolError); the exchange is over."""

    code: Word
    message: Text


@message("ping")
@dataclass(frozen=True, slots=True)
class Ping:
    """Liveness probe; the peer answers with a Pong of the same nonce."""

    nonce: Nonce


@message("pong")
@dataclass(frozen=True, slots=True)
class Pong:
    """Answer to a Ping."""

    nonce: Nonce


@message("lane")
@dataclass(frozen=True, slots=True)
class Lane:
    """Receiver to sender, after ``accept``: the LAN lane for this handoff (docs/transport.md §5).

    Where the receiver's lane listens (IP literals, a port) and a single-use token bound to
    the handoff and both devices. Sent only to a sender whose hello lists the ``lane``
    feature; the sender may ignore it.
    """

    handoff_id: Id
    hosts: Annotated[tuple[Host, ...], Min(1), Max(8)]
    port: Annotated[int, Range(1, 65535)]
    token: Annotated[bytes, Min(16), Max(32)]


Message = (
    Hello
    | Manifest
    | Offer
    | OfferPart
    | Accept
    | Decline
    | Data
    | Ack
    | Delivered
    | Resumed
    | Cancel
    | Error
    | Ping
    | Pong
    | Lane
)

ENCLOSED: frozenset[type[Message]] = frozenset({Manifest, Offer})
"""Messages never sent alone on a channel (see the module docstring)."""


def encode(msg: Message) -> bytes:
    """Canonical bytes of ``msg`` (see codec.encode)."""
    return codec.encode(msg)


def decode(data: bytes, *, max_size: int = codec.MAX_MESSAGE) -> Message:
    """One message from ``data``, strictly; ProtocolError (blame peer) otherwise."""
    return typing.cast("Message", codec.decode(data, max_size=max_size))
