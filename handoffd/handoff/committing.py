"""Committing a received handoff: its files into the inbox and its entry recorded (durable,
before the sender is told ``delivered``), then the record, the event and the apps (after it:
the sender's person waits on the first part only)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from handoffd.handoff.offer import manifest_context
from handoffd.handoff.records import Records
from handoffd.handoff.staging import Staging
from handoffd.handoff.tables import InboxEntry
from handoffd.handoff.timings import Clock
from handoffd.proto import messages as m
from handoffd.store import HandoffRecord, Store

logger = logging.getLogger("handoffd.handoff.incoming")


@dataclass(frozen=True, slots=True)
class Received:
    """A handoff in the inbox, durable, not yet announced."""

    entry: InboxEntry
    record: HandoffRecord | None


class Committer:
    """Moves verified items into the inbox and announces the entry."""

    def __init__(
        self,
        *,
        store: Store,
        records: Records,
        staging: Staging,
        clock: Clock,
        on_received: Callable[[InboxEntry], Awaitable[None]],
    ) -> None:
        self.store = store
        self.records = records
        self.db = records.db
        self.staging = staging
        self.clock = clock
        self.on_received = on_received

    async def commit(
        self,
        manifest: m.Manifest,
        names: Mapping[int, str],
        peer: str,
        peer_name: str,
        held: Mapping[int, bytearray] | None = None,
    ) -> Received:
        """Move the verified items (files, or ``held`` in memory) into ``inbox/<id>/`` and
        record the entry."""
        hid = manifest.handoff_id
        inbox_dir = self.staging.inbox_dir(hid)
        items = [
            {
                "type": e.type,
                "name": names[e.index],
                "mime": e.mime,
                "size": e.size,
                "sha256": e.sha256.hex(),
                "path": os.fspath(inbox_dir / names[e.index]),
            }
            for e in manifest.items
            if e.index in names
        ]
        doc = {
            "id": hid,
            "session_id": manifest.session_id,
            "app_id": manifest.app_id,
            "title": manifest.title,
            "context": manifest_context(manifest),
            "from": {"device_id": peer, "name": peer_name},
            "items": items,
            "sent_at": manifest.created_ms / 1000,
        }
        await asyncio.to_thread(
            self.staging.commit, hid, [(i, names[i]) for i in sorted(names)], doc, held
        )
        return await self.add(manifest, doc, peer, peer_name)

    async def add(
        self, manifest: m.Manifest, doc: Mapping[str, Any], peer: str, peer_name: str
    ) -> Received:
        """Record the inbox entry of a committed handoff (its checkpoints forgotten)."""
        hid = manifest.handoff_id
        items = doc.get("items")
        context = doc.get("context")
        entry = InboxEntry(
            id=hid,
            session_id=manifest.session_id,
            app_id=manifest.app_id,
            title=manifest.title,
            context=context if isinstance(context, dict) else {},
            from_device=peer,
            from_name=peer_name,
            items=tuple(items) if isinstance(items, list) else (),
            state="received",
            received_at=self.clock.wall(),
            resumed_at=None,
        )

        def add() -> HandoffRecord | None:
            self.db.add_inbox(entry)
            self.db.clear_checkpoints(hid)
            return self.store.get_handoff(hid)

        return Received(entry, await self.store.run(add))

    async def announce(self, received: Received) -> None:
        """The record ``delivered``, ``handoff.received``, and the apps told."""
        entry, record = received.entry, received.record
        if record is not None:
            await self.records.set(
                entry.id, {}, state="delivered", bytes_done=record.bytes_total, error=None
            )
        self.records.events.publish(
            {
                "type": "handoff.received",
                "handoff_id": entry.id,
                "app_id": entry.app_id,
                "title": entry.title,
                "from": {"device_id": entry.from_device, "name": entry.from_name},
            }
        )
        logger.info("session received", extra={"handoff": entry.id, "app": entry.app_id})
        await self.on_received(entry)
