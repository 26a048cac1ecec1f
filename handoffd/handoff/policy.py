"""The receiver's policy for an offer (pure): accept which items, or decline with which reason."""

from __future__ import annotations

from dataclasses import dataclass

from handoffd.config import Settings
from handoffd.proto import messages as m

MAX_HANDOFF_BYTES = 64 * 1024**3
DISK_MARGIN = 256 * 1024 * 1024
"""Bytes kept free on the receiver's disk beyond what an accepted handoff takes."""


@dataclass(frozen=True, slots=True)
class Decision:
    """What the receiver does with an offer: accept ``indexes``, or decline with ``reason``."""

    indexes: tuple[int, ...] = ()
    reason: str | None = None
    message: str = ""


def decide(
    manifest: m.Manifest,
    settings: Settings,
    *,
    free_bytes: int,
    held: int = 0,
    max_bytes: int = MAX_HANDOFF_BYTES,
    margin: int = DISK_MARGIN,
    inbox_full: bool = False,
) -> Decision:
    """The receiver's policy: enabled?, items?, acceptable types, size, disk space (``held``
    already on disk; ``free_bytes`` net of other handoffs' reservations), room in the inbox."""
    if not settings.handoff_enabled:
        return Decision(reason="handoff-disabled", message="handoffs are disabled on this device")
    if not manifest.items:
        return Decision(reason="no-items", message="a handoff must carry at least one item")
    wanted = tuple(i.index for i in manifest.items if settings.accepts(i.type))
    if manifest.items and not wanted:
        types = sorted({i.type for i in manifest.items})
        return Decision(
            reason="type-not-accepted",
            message=f"this device accepts none of the offered types: {', '.join(types)}"[:1000],
        )
    total = sum(i.size for i in manifest.items if i.index in wanted)
    if total > max_bytes:
        return Decision(reason="too-large", message=f"{total} bytes exceed the limit {max_bytes}")
    if total - held + margin > free_bytes:
        return Decision(
            reason="no-disk-space", message=f"{total} bytes do not fit ({free_bytes} free)"
        )
    if inbox_full:
        return Decision(
            reason="inbox-full",
            message="too many received sessions wait for their app on the receiving device",
        )
    return Decision(indexes=wanted)
