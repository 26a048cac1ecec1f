"""Handoffs to a known device that is offline: queued as ``waiting-for-device`` (for at most
the setting ``offline_wait`` seconds), and sent as soon as the device is nearby (mDNS) or
online at the server. The state and its deadline (``next_retry_at``, shown as
``waiting_until``) are in the handoff's record, so the queue survives a restart.

"Known offline" needs knowledge: the server link is up, does not list the device, and no
mDNS sighting nor ``unicast_peers`` address is there for it. Without a server link nothing
is known, and the handoff is tried (and retried) as before.
"""

from __future__ import annotations

import asyncio
import logging

from handoffd.config import SettingsFile
from handoffd.handoff.presence import Presence
from handoffd.handoff.records import Records, error_text
from handoffd.handoff.timings import Clock
from handoffd.store import HandoffRecord

logger = logging.getLogger("handoffd.handoff.waiting")

WAITING = "waiting-for-device"
POLL = 0.5


def reachable(presence: Presence, device_id: str) -> bool:
    """True if the device can be tried now: a LAN address, or the server lists it online."""
    if presence.addresses(device_id):
        return True
    server = presence.server
    return server is not None and server.reachable(device_id)


def known_offline(presence: Presence, device_id: str) -> bool:
    """True only if the server link is up and nothing says the device is there."""
    server = presence.server
    return server is not None and server.connected and not reachable(presence, device_id)


class DeviceWait:
    """Holds an outgoing handoff until its device comes online (or the wait ends)."""

    def __init__(
        self, *, presence: Presence, records: Records, settings: SettingsFile, clock: Clock
    ) -> None:
        self.presence = presence
        self.records = records
        self.settings = settings
        self.clock = clock

    def should_wait(self, record: HandoffRecord) -> bool:
        """A queued handoff, or a first try at a device known to be offline."""
        if record.state == WAITING:
            return True
        return (
            record.attempts == 0
            and self.settings.current.offline_wait > 0
            and known_offline(self.presence, record.peer)
        )

    async def wait(self, record: HandoffRecord) -> bool:
        """Until the device is reachable (True) or the wait ended (False: recorded ``failed``)."""
        hid = record.id
        wait_for = self.settings.current.offline_wait
        if record.state != WAITING:
            deadline = self.clock.wall() + wait_for
            await self.records.set(hid, {"next_retry_at": deadline}, state=WAITING, error=None)
            logger.info("device offline: handoff queued", extra={"handoff": hid})
        else:
            meta = await self.records.store.run(self.records.db.meta, hid)
            deadline = meta.next_retry_at or record.created_at + wait_for
        while not reachable(self.presence, record.peer):
            left = deadline - self.clock.wall()
            if left <= 0:
                await self.records.set(
                    hid,
                    {"next_retry_at": None},
                    state="failed",
                    error=error_text("device-offline", "the device did not come online in time"),
                )
                return False
            await asyncio.sleep(min(POLL, left))
        logger.info("device online: the queued handoff goes", extra={"handoff": hid})
        return True
