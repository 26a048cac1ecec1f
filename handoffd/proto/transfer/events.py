"""What the transfer machines report (events, drained by the adapter) and their states."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from handoffd.errors import Blame
from handoffd.proto import messages as m


@dataclass(frozen=True, slots=True)
class PeerHello:
    """The peer's hello (its CRL, if any, is for the adapter to verify and gossip-merge)."""

    hello: m.Hello


@dataclass(frozen=True, slots=True)
class LaneOffered:
    """Sender, while streaming: the receiver offers its LAN lane (the adapter may dial it)."""

    lane: m.Lane


@dataclass(frozen=True, slots=True)
class OfferReceived:
    """Receiver: an offer arrived; verify it, then call accept, decline or already_delivered."""

    offer: m.Offer
    manifest: m.Manifest


@dataclass(frozen=True, slots=True)
class Accepted:
    """Sender: the receiver takes these items (index -> offset it continues from)."""

    resume: Mapping[int, int]


@dataclass(frozen=True, slots=True)
class NeedData:
    """Sender: read ``length`` bytes of item ``index`` at ``offset``, then call data_ready."""

    index: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class WriteData:
    """Receiver: write these bytes; make them durable; then call checkpoint_done."""

    index: int
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class CheckpointNeeded:
    """Receiver: half the window is unacknowledged; make item ``index`` durable, call checkpoint_done."""

    index: int


@dataclass(frozen=True, slots=True)
class ItemComplete:
    """Receiver: every byte of item ``index`` arrived; make durable, hash, call item_verified."""

    index: int


@dataclass(frozen=True, slots=True)
class Commit:
    """Receiver: every item verified; move into the inbox atomically, then call committed."""


@dataclass(frozen=True, slots=True)
class Progress:
    """Bytes acknowledged (sender) or received (receiver) so far, of the total accepted."""

    done: int
    total: int


@dataclass(frozen=True, slots=True)
class Delivered:
    """The receiver holds the session in its inbox."""


@dataclass(frozen=True, slots=True)
class Resumed:
    """The app on the receiver picked the session up."""


@dataclass(frozen=True, slots=True)
class Declined:
    """The receiver refused the handoff."""

    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The handoff was given up (``by_peer`` says by whom)."""

    reason: str
    by_peer: bool


@dataclass(frozen=True, slots=True)
class Failed:
    """The exchange broke; ``blame`` says who broke it."""

    code: str
    message: str
    blame: Blame


Event = (
    PeerHello
    | OfferReceived
    | Accepted
    | NeedData
    | WriteData
    | CheckpointNeeded
    | ItemComplete
    | Commit
    | Progress
    | Delivered
    | Resumed
    | Declined
    | Cancelled
    | Failed
    | LaneOffered
)


class State(enum.StrEnum):
    """States of both machines (each uses a subset; see docs/protocol.md)."""

    IDLE = "idle"
    AWAIT_OFFER = "await-offer"
    DECIDING = "deciding"
    AWAIT_ANSWER = "await-answer"
    STREAMING = "streaming"
    RECEIVING = "receiving"
    COMMITTING = "committing"
    AWAIT_DELIVERED = "await-delivered"
    DELIVERED = "delivered"
    RESUMED = "resumed"
    DECLINED = "declined"
    CANCELLED = "cancelled"
    FAILED = "failed"


TERMINAL = frozenset({State.RESUMED, State.DECLINED, State.CANCELLED, State.FAILED})
