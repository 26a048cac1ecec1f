"""Disk space promised to incoming handoffs in flight, so concurrent offers cannot overcommit.

Each accepted exchange reserves what it still has to write (its accepted bytes minus what is on
disk); progress lowers the reservation, and the end of the exchange (delivered, failed,
declined, cancelled) releases it. An offer is checked against the free space minus what the
*other* exchanges reserved.
"""

from __future__ import annotations


def capped(free: int, cap: int) -> int:
    """``free`` bytes of the disk, at most ``cap`` when ``cap`` > 0."""
    return min(free, cap) if cap > 0 else free


class Reservations:
    """Bytes each in-flight incoming handoff still has to write, keyed by handoff id."""

    def __init__(self) -> None:
        self._left: dict[str, int] = {}
        self._owner: dict[str, object] = {}

    def reserve(self, handoff_id: str, remaining: int, owner: object) -> None:
        """``owner`` (the receiving exchange) will write ``remaining`` more bytes."""
        self._left[handoff_id] = max(0, remaining)
        self._owner[handoff_id] = owner

    def progress(self, handoff_id: str, remaining: int) -> None:
        """Only ``remaining`` bytes are still to come (no-op when nothing is reserved)."""
        if handoff_id in self._left:
            self._left[handoff_id] = max(0, remaining)

    def release(self, handoff_id: str, owner: object) -> None:
        """The exchange ``owner`` ended: its reservation goes (idempotent; another owner's stays)."""
        if self._owner.get(handoff_id) is owner:
            del self._owner[handoff_id]
            del self._left[handoff_id]

    def others(self, handoff_id: str) -> int:
        """Bytes reserved by every handoff but ``handoff_id``."""
        return sum(n for hid, n in self._left.items() if hid != handoff_id)

    def available(self, free: int, handoff_id: str) -> int:
        """What an offer of ``handoff_id`` may count as free: ``free`` minus the others' share."""
        return max(0, free - self.others(handoff_id))
