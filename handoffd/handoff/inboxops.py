"""What a person does with the inbox: answer the open questions (consent), open an entry with
its receiver (a built-in one, or its app launched), mark it resumed, or discard it."""

from __future__ import annotations

import asyncio
import logging
import os

from handoffd.errors import ConflictError, StoreError
from handoffd.handoff import sendables
from handoffd.handoff.apps import Apps
from handoffd.handoff.consent import Asking, Consent
from handoffd.handoff.notices import Notices
from handoffd.handoff.receivers import Receivers
from handoffd.handoff.records import Records, error_text
from handoffd.handoff.staging import Staging
from handoffd.handoff.tables import InboxEntry
from handoffd.handoff.timings import Clock
from handoffd.store import Store

logger = logging.getLogger("handoffd.handoff.inboxops")


class InboxOps:
    """The inbox's actions (the control API and ``handoff inbox`` call these)."""

    def __init__(
        self,
        *,
        store: Store,
        records: Records,
        staging: Staging,
        notices: Notices,
        receivers: Receivers,
        apps: Apps,
        consent: Consent,
        clock: Clock,
    ) -> None:
        self.store = store
        self.records = records
        self.db = records.db
        self.staging = staging
        self.notices = notices
        self.receivers = receivers
        self.apps = apps
        self.consent = consent
        self.clock = clock

    def asking(self) -> list[Asking]:
        """Offers waiting for their person's answer."""
        return self.consent.open_questions()

    def answer(self, handoff_id: str, *, accept: bool) -> Asking:
        """Accept or decline an open question (NotFoundError(asking-not-found))."""
        return self.consent.answer(handoff_id, accept=accept)

    async def open(self, entry_id: str) -> InboxEntry:
        """Hand the entry to its receiver now, whatever the settings say: a built-in receiver
        (then it is resumed), or its registered app, launched. ConflictError(no-receiver) if
        nothing on this device can take it."""
        entry = await self.notices.inbox_entry(entry_id)
        if entry.app_id in sendables.BUILTIN_APPS and (
            await self.store.run(self.store.get_app, entry.app_id) is None
        ):
            if not await self.receivers.take(entry, force=True):
                raise ConflictError(
                    "nothing on this device can open it (no clipboard tool or browser opener)",
                    code="no-receiver",
                )
            return await self.notices.confirm_resumed(entry.id)
        if not await self.apps.launch(entry):
            raise ConflictError(f"no app registered for {entry.app_id}", code="no-receiver")
        return entry

    async def resume(self, entry_id: str) -> InboxEntry:
        """Mark the entry resumed (the source is told)."""
        return await self.notices.confirm_resumed(entry_id)

    async def discard(self, entry_id: str) -> InboxEntry:
        """Delete the entry and its files; its incoming handoff ends (``failed``: discarded)."""
        entry = await self.notices.inbox_entry(entry_id)
        now = self.clock.wall()
        await asyncio.to_thread(self.staging.discard_inbox, entry.id)
        await self.store.run(self.db.add_expired, entry.id, "discarded", now)
        await self.store.run(self.db.set_inbox_state, entry.id, "discarded", resumed_at=None)
        record = await self.records.get(entry.id)
        if record is not None and record.state == "delivered":
            try:
                await self.records.set(
                    entry.id, {}, state="failed", error=error_text("discarded", "discarded")
                )
            except StoreError as exc:
                logger.warning("discard not recorded error=%s", exc.code)
        logger.info("inbox entry discarded", extra={"handoff": entry.id})
        items = tuple({**i, "path": os.fspath(i.get("path", ""))} for i in entry.items)
        return InboxEntry(
            entry.id, entry.session_id, entry.app_id, entry.title, entry.context,
            entry.from_device, entry.from_name, items, "discarded", entry.received_at,
            entry.resumed_at,
        )  # fmt: skip
