"""The transfer protocol as two sans-IO state machines: sender and receiver.

No sockets, no asyncio, no clock reads: an adapter feeds the peer's messages
and the time in, calls the methods below when its own work is done, drains
``outgoing()`` (messages to send, in order) and ``events()`` (what it must do
or report, in order), and calls ``timer(now)`` at ``next_timer()``.
Transitions are tables of ``(state, message tag) -> handler``; ``ping``,
``pong``, ``error`` and ``cancel`` are valid in every state. Any other message
with no entry for the current state, or one that breaks a rule, ends the
exchange: state ``failed``, a ``Failed`` event (blame: peer) and an ``error``
message to the peer. ``receive`` never raises for anything the peer sends.

Calls that break the adapter contract raise ``ProtocolError(code="misuse",
blame=LOCAL)``. The receiver never acknowledges bytes it has not made durable:
it emits ``WriteData``; the adapter writes, fsyncs, records a checkpoint and
only then calls ``checkpoint_done``, which queues the ``ack``.
Layout: ``events`` (events, states), ``core`` (what both share and the table
dispatch), ``sender`` and ``receiver`` (each machine with its table).
See docs/protocol.md for the messages, tables and rules.
"""

from __future__ import annotations

from handoffd.proto.transfer.core import DEFAULT_WINDOW, IDLE_TIMEOUT, PING_INTERVAL
from handoffd.proto.transfer.events import (
    TERMINAL,
    Accepted,
    Cancelled,
    CheckpointNeeded,
    Commit,
    Declined,
    Delivered,
    Event,
    Failed,
    ItemComplete,
    LaneOffered,
    NeedData,
    OfferReceived,
    PeerHello,
    Progress,
    Resumed,
    State,
    WriteData,
)
from handoffd.proto.transfer.receiver import ReceiverCore
from handoffd.proto.transfer.sender import SenderCore

__all__ = [
    "DEFAULT_WINDOW",
    "IDLE_TIMEOUT",
    "PING_INTERVAL",
    "TERMINAL",
    "Accepted",
    "Cancelled",
    "CheckpointNeeded",
    "Commit",
    "Declined",
    "Delivered",
    "Event",
    "Failed",
    "ItemComplete",
    "LaneOffered",
    "NeedData",
    "OfferReceived",
    "PeerHello",
    "Progress",
    "ReceiverCore",
    "Resumed",
    "SenderCore",
    "State",
    "WriteData",
]
