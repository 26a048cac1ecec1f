"""The receiver adapter's state for one exchange: open partial files (small items in
memory), their running hashes, checkpoints before acknowledgements, and the commit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from handoffd.handoff.driver_events import (
    Announce,
    Checkpoint,
    Commit,
    Failed,
    OfferReceived,
    PeerHello,
    Progress,
    ReceiverEvent,
    Verdict,
)
from handoffd.handoff.link import Exchange
from handoffd.handoff.staging import ItemWriter, Staging
from handoffd.proto import messages as m
from handoffd.proto import transfer as core

logger = logging.getLogger("handoffd.handoff.driver")

CHECKPOINT_EVERY = 4 * 1024 * 1024
"""Bytes of an item written between two fsync + checkpoint + ack (the core also asks for one
at half the window)."""
SMALL_ITEM = 256 * 1024
SMALL_HELD = 1024 * 1024
"""Items up to SMALL_ITEM (SMALL_HELD in all per exchange) taken from the start are held in
memory, written once by the commit and acknowledged then (an ack always means durable): a
small session's answer would otherwise wait on a partial file per item, its fsync and its
recorded checkpoint. If the receiver stops before the commit, they come again."""


class ReceiverConsumer(Protocol):
    """The one consumer of a receiving exchange's events (all on the event loop)."""

    async def decide(self, event: OfferReceived) -> Verdict:
        """The verdict on an offer (accept from offsets, decline, already delivered)."""

    async def handle(self, event: ReceiverEvent) -> None:
        """Record or act on every other event."""


class Receiving:
    """The receiver adapter's state for one exchange: open partial files and their hashes."""

    def __init__(
        self,
        c: core.ReceiverCore,
        ex: Exchange,
        staging: Staging,
        consumer: ReceiverConsumer,
        now: Callable[[], float],
        flush: Callable[[], Awaitable[None]],
    ) -> None:
        self.c = c
        self.flush = flush
        self.ex = ex
        self.staging = staging
        self.consumer = consumer
        self.now = now
        self.writers: dict[int, ItemWriter] = {}
        self.unsynced: dict[int, int] = {}
        self.manifest: m.Manifest | None = None
        self.entries: dict[int, m.ItemEntry] = {}
        """The manifest's items by index (looked up once per offer, not per item)."""
        self.names: Mapping[int, str] = {}
        self.lane: m.Lane | None = None
        self.lane_early = False
        """The sender's hello lists ``lane-early``: its lane goes just before the accept."""

    def close(self) -> None:
        for writer in self.writers.values():
            with contextlib.suppress(OSError):
                Staging.close_item(writer)

    async def handle(self, events: Sequence[core.Event]) -> None:
        """Act on the core's events: writes first (batched per item), then the rest in order."""
        writes: dict[int, list[core.WriteData]] = {}
        for event in events:
            if isinstance(event, core.WriteData):
                writes.setdefault(event.index, []).append(event)
        # One thread hop per batch, not per item: a small session's items arrive together.
        jobs = [(self.writers[i], g[0].offset, [w.data for w in g]) for i, g in writes.items()]
        on_disk = [job for job in jobs if job[0].memory is None]
        Staging.write_many([job for job in jobs if job[0].memory is not None])
        if on_disk:
            await asyncio.to_thread(Staging.write_many, on_disk)
        for index, group in writes.items():
            self.unsynced[index] = self.unsynced.get(index, 0) + sum(len(w.data) for w in group)
            if self.unsynced[index] >= CHECKPOINT_EVERY:
                await self.checkpoint(index)
        completed = [e.index for e in events if isinstance(e, core.ItemComplete)]
        files = [i for i in completed if self.writers[i].memory is None]
        synced: set[int] = set()
        if len(files) > 1:  # written above: made durable together
            await asyncio.to_thread(Staging.sync_many, [self.writers[i] for i in files])
            synced.update(files)
        for event in events:
            if isinstance(event, core.PeerHello):
                self.lane_early = m.FEATURE_LANE_EARLY in event.hello.features
                await self.consumer.handle(PeerHello(event.hello))
            elif isinstance(event, core.OfferReceived):
                await self.offer(event.offer, event.manifest)
            elif isinstance(event, core.Progress):
                await self.consumer.handle(Progress(self.ex.handoff_id, event.done, event.total))
            elif isinstance(event, core.ItemComplete):
                await self.complete(event.index, synced=event.index in synced)
            elif isinstance(event, core.CheckpointNeeded) and event.index in self.writers:
                await self.checkpoint(event.index)
            elif isinstance(event, core.Commit) and self.manifest is not None:
                opened = [w for w in self.writers.values() if w.memory is None]
                if opened:
                    await asyncio.to_thread(Staging.close_many, opened)
                held = {i: w.memory for i, w in self.writers.items() if w.memory is not None}
                await self.consumer.handle(Commit(self.manifest, self.names, held))
                for index, w in self.writers.items():
                    if w.memory is not None:
                        self.c.checkpoint_done(index, w.offset, self.now())
                self.c.committed(self.now())
                try:
                    await self.flush()  # the sender hears it before the bookkeeping below
                finally:
                    await self.consumer.handle(Announce(self.ex.handoff_id))
            elif isinstance(event, core.Failed):
                await self.consumer.handle(Failed(self.ex.handoff_id, event.code, event.message))
            elif isinstance(event, core.Cancelled):
                await self.consumer.handle(Failed(self.ex.handoff_id, "cancelled", event.reason))

    async def offer(self, offer: m.Offer, manifest: m.Manifest) -> None:
        self.manifest = manifest
        self.entries = {i.index: i for i in manifest.items}
        self.ex.handoff_id = manifest.handoff_id
        verdict = await self.consumer.decide(OfferReceived(offer, manifest))
        if verdict.decline is not None:
            self.c.decline(verdict.decline[0], verdict.decline[1], self.now())
            return
        if verdict.delivered or not verdict.resume:
            self.c.already_delivered(self.now())
            return
        self.names = dict(verdict.names or {})
        room = SMALL_HELD
        files: dict[int, int] = {}
        for index, offset in verdict.resume.items():
            size = self.entries[index].size if index in self.entries else SMALL_ITEM + 1
            if offset == 0 and size <= min(SMALL_ITEM, room):
                self.writers[index] = ItemWriter.in_memory()
                room -= size
            else:
                files[index] = offset
        if files:
            self.writers.update(
                await asyncio.to_thread(self.staging.open_items, manifest.handoff_id, files)
            )
        resume = {i: w.offset for i, w in self.writers.items()}
        for index, offset in resume.items():
            if offset != verdict.resume[index]:
                await self.consumer.handle(Checkpoint(manifest.handoff_id, index, offset))
        self.c.accept(resume, self.now())
        self.lane = verdict.lane

    async def checkpoint(self, index: int, *, synced: bool = False) -> None:
        """fsync (unless ``synced`` already), record the checkpoint, and only then let the
        core acknowledge."""
        writer = self.writers[index]
        if writer.memory is not None:  # acknowledged once the commit wrote it
            return
        if not synced:
            await asyncio.to_thread(Staging.sync, writer)
        await self.consumer.handle(Checkpoint(self.ex.handoff_id, index, writer.offset))
        self.unsynced[index] = 0
        self.c.checkpoint_done(index, writer.offset, self.now())

    async def complete(self, index: int, *, synced: bool = False) -> None:
        """All bytes of ``index`` are here: make them durable, check the hash."""
        await self.checkpoint(index, synced=synced)
        entry = self.entries.get(index)
        writer = self.writers[index]
        ok = entry is not None and writer.hasher.digest() == entry.sha256
        if not ok:
            logger.warning(
                "item does not match its hash", extra={"handoff": self.ex.handoff_id, "item": index}
            )
            await asyncio.to_thread(Staging.close_item, writer)
            await asyncio.to_thread(self.staging.discard_item, self.ex.handoff_id, index)
            await self.consumer.handle(Checkpoint(self.ex.handoff_id, index, 0))
        self.c.item_verified(index, ok, self.now())
