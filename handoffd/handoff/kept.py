""" "Kept" notices: the target tells the source that a delivered session waits in its inbox for
its person (no app will resume it: none registered, ``auto_accept`` off, or a built-in receiver
that did not take it), so ``handoff send`` can stop waiting at ``delivered`` and say so.

A signed ``handoff-kept`` envelope (payload: the ``Resumed`` message of the handoff id, under
its own purpose) over LAN signaling or through the server, acknowledged by a signed
``handoff-kept-ack``; best effort (a few tries, not persisted): without it the sender's CLI
falls back to waiting ``--grace`` seconds. The source keeps what it was told in memory and
shows it as ``kept_in_inbox`` on the handoff.
"""

from __future__ import annotations

import asyncio
import logging

from handoffd.errors import HandoffError
from handoffd.events import EventBus
from handoffd.handoff.local import LocalDevice
from handoffd.handoff.notices import Notices
from handoffd.handoff.records import Records
from handoffd.handoff.tables import InboxEntry
from handoffd.handoff.timings import Clock
from handoffd.transport.base import LocalIdentity

logger = logging.getLogger("handoffd.handoff.kept")

PURPOSE_KEPT = "handoff-kept"
PURPOSE_KEPT_ACK = "handoff-kept-ack"
TRIES = 3
PAUSE = 1.0
MAX_REMEMBERED = 10_000


class Kept:
    """Both sides of "kept in the inbox"."""

    def __init__(
        self,
        *,
        notices: Notices,
        records: Records,
        local: LocalDevice,
        events: EventBus,
        clock: Clock,
    ) -> None:
        self.notices = notices
        self.records = records
        self.local = local
        self.events = events
        self.clock = clock
        self.kept: set[str] = set()
        """Our outgoing handoffs whose target said it keeps them in its inbox."""

    # ------------------------------------------------------------ the target

    async def tell(self, entry: InboxEntry) -> None:
        """Tell the source of ``entry`` that it waits for a person here (best effort)."""
        for attempt in range(TRIES):
            try:
                await self.notices.send(entry.id, entry.from_device, PURPOSE_KEPT, PURPOSE_KEPT_ACK)
            except HandoffError as exc:
                logger.info(
                    "kept notice not delivered code=%s attempt=%d",
                    exc.code,
                    attempt + 1,
                    extra={"handoff": entry.id},
                )
                await asyncio.sleep(PAUSE)
                continue
            logger.info("source told the session waits in the inbox", extra={"handoff": entry.id})
            return

    # ------------------------------------------------------------ the source

    async def on_notice(self, local: LocalIdentity, data: bytes) -> bytes:
        """A kept notice from a target: remember it, answer with a signed ack.
        EnvelopeError(envelope-wrong-context) if ``data`` is not one."""
        return await self.notices.receive(local, data, PURPOSE_KEPT, PURPOSE_KEPT_ACK, self._kept)

    async def _kept(self, hid: str, sender: str) -> bool:
        record = await self.records.get(hid)
        if record is None or record.direction != "out" or record.peer != sender:
            return False
        if len(self.kept) >= MAX_REMEMBERED:
            self.kept.clear()
        self.kept.add(hid)
        self.events.publish({"type": "handoff.kept", "handoff_id": hid})
        return True
