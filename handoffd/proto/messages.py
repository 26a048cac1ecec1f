"""The transfer protocol's messages (see docs/protocol.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from handoffd.proto.codec import Max, message, record

PROTOCOL_VERSION = 1
MAX_CHUNK = 60 * 1024
"""Payload bytes in one Data message: the whole message stays under 64 KiB."""
MAX_ITEMS = 10_000
MAX_CONTEXT = 64 * 1024

Id = Annotated[str, Max(64)]
Word = Annotated[str, Max(64)]
Name = Annotated[str, Max(255)]


@message("hello")
@dataclass(frozen=True, slots=True)
class Hello:
    """First message each way: protocol version, who we are, our CRL (gossip)."""

    version: int
    device_id: Id
    crl_number: int
    crl: Annotated[bytes, Max(1024 * 1024)] | None
    features: Annotated[tuple[Word, ...], Max(32)]


@record
@dataclass(frozen=True, slots=True)
class ItemEntry:
    """One item of a manifest."""

    index: int
    type: Word
    name: Name
    mime: Annotated[str, Max(255)]
    size: int
    sha256: Annotated[bytes, Max(32)]


@message("manifest")
@dataclass(frozen=True, slots=True)
class Manifest:
    """What the sender offers; its encoding is what the sender signs."""

    handoff_id: Id
    session_id: Id
    app_id: Annotated[str, Max(255)]
    title: Annotated[str, Max(1024)]
    context: Annotated[bytes, Max(MAX_CONTEXT)]
    items: Annotated[tuple[ItemEntry, ...], Max(MAX_ITEMS)]
    sender: Id
    recipient: Id
    created_ms: int


@message("offer")
@dataclass(frozen=True, slots=True)
class Offer:
    """A signed manifest: the manifest bytes, the sender's signature and certificate."""

    manifest: Annotated[bytes, Max(900 * 1024)]
    signature: Annotated[bytes, Max(64)]
    cert: Annotated[bytes, Max(8 * 1024)]


@record
@dataclass(frozen=True, slots=True)
class Resume:
    """Where an accepted item continues: bytes durably held so far."""

    index: int
    offset: int


@message("accept")
@dataclass(frozen=True, slots=True)
class Accept:
    """The receiver takes these items (others are not wanted), from these offsets."""

    handoff_id: Id
    items: Annotated[tuple[Resume, ...], Max(MAX_ITEMS)]


@message("decline")
@dataclass(frozen=True, slots=True)
class Decline:
    """The receiver refuses the handoff."""

    handoff_id: Id
    reason: Word
    message: Annotated[str, Max(1024)]


@message("data")
@dataclass(frozen=True, slots=True)
class Data:
    """A chunk of an item."""

    handoff_id: Id
    index: int
    offset: int
    data: Annotated[bytes, Max(MAX_CHUNK)]


@message("ack")
@dataclass(frozen=True, slots=True)
class Ack:
    """The receiver holds the item durably up to ``offset``."""

    handoff_id: Id
    index: int
    offset: int


@message("delivered")
@dataclass(frozen=True, slots=True)
class Delivered:
    """Every accepted item is verified and committed to the inbox."""

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
    """A protocol error; the connection closes after it."""

    code: Word
    message: Annotated[str, Max(1024)]


@message("ping")
@dataclass(frozen=True, slots=True)
class Ping:
    """Liveness probe."""

    nonce: int


@message("pong")
@dataclass(frozen=True, slots=True)
class Pong:
    """Answer to a ping."""

    nonce: int


Message = (
    Hello
    | Manifest
    | Offer
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
)
