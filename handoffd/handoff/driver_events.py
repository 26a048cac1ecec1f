"""What a driver tells its one consumer: typed events of a sending or receiving exchange, the
sender's report, and the receiver consumer's verdict on an offer."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from handoffd.proto import messages as m


@dataclass
class SendReport:
    """What a sender exchange did (for the record and the proofs in tests)."""

    accepted: dict[int, int] = dataclasses.field(default_factory=dict)
    total: int = 0
    skipped: int = 0
    data_bytes: int = 0
    channel_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Verdict:
    """The service's answer to an offer: accept from offsets, decline, or already delivered."""

    resume: Mapping[int, int] | None = None
    names: Mapping[int, str] | None = None
    decline: tuple[str, str] | None = None
    delivered: bool = False
    lane: m.Lane | None = None
    """Sent to the sender with the accept: the LAN lane for this handoff."""
    peer_name: str = ""
    """The sender's name as this device knows it (read while deciding; the commit uses it)."""


@dataclass(frozen=True, slots=True)
class PeerHello:
    """The peer's hello (it may carry a newer CRL)."""

    hello: m.Hello


@dataclass(frozen=True, slots=True)
class Progress:
    """``done`` of ``total`` accepted bytes moved."""

    handoff_id: str
    done: int
    total: int


@dataclass(frozen=True, slots=True)
class Transferring:
    """The receiver accepted (``report.accepted``): bytes start to move."""

    handoff_id: str
    report: SendReport


@dataclass(frozen=True, slots=True)
class Delivered:
    """The receiver has every accepted item, verified and committed."""

    handoff_id: str
    report: SendReport


@dataclass(frozen=True, slots=True)
class Resumed:
    """The receiver's app resumed the session (told on this exchange)."""

    handoff_id: str


@dataclass(frozen=True, slots=True)
class LaneOffer:
    """The receiver offers its LAN lane for this handoff (the sender may move onto it)."""

    lane: m.Lane


SenderEvent = PeerHello | Transferring | Progress | Delivered | Resumed | LaneOffer


@dataclass(frozen=True, slots=True)
class OfferReceived:
    """A verified-format offer to decide on."""

    offer: m.Offer
    manifest: m.Manifest


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Item ``index`` of ``handoff_id`` is durable up to ``offset``: record it."""

    handoff_id: str
    index: int
    offset: int


@dataclass(frozen=True, slots=True)
class Commit:
    """Every accepted item arrived and verified: commit them under ``names``."""

    manifest: m.Manifest
    names: Mapping[int, str]
    held: Mapping[int, bytearray] = dataclasses.field(default_factory=dict)
    """Items held in memory (small ones), written by the commit."""


@dataclass(frozen=True, slots=True)
class Failed:
    """The receiving exchange ended without delivering (``code``: why)."""

    handoff_id: str
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Announce:
    """The sender was told ``delivered`` (or could not be): announce what was committed."""

    handoff_id: str


ReceiverEvent = PeerHello | Progress | Checkpoint | Commit | Announce | Failed
