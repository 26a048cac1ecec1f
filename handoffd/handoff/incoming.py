"""Incoming handoffs: one receiver driver per exchange a peer begins, and its one consumer,
which decides the offer (see ``policy.decide``), records checkpoints and progress, commits the
items into the inbox and hands the entry to the app launcher."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from handoffd.config import SettingsFile
from handoffd.devicestate import DeviceState
from handoffd.errors import ProtocolError, StoreError
from handoffd.handoff.committing import Committer, Received
from handoffd.handoff.consent import Consent
from handoffd.handoff.driver import run_receiver
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
from handoffd.handoff.lanes import LaneService
from handoffd.handoff.link import Exchange, Link
from handoffd.handoff.links import LinkPool
from handoffd.handoff.local import LocalDevice
from handoffd.handoff.offer import open_offer, unique_names
from handoffd.handoff.offerfacts import disk_facts, stored_facts
from handoffd.handoff.policy import decide
from handoffd.handoff.records import Records, error_text
from handoffd.handoff.reservations import Reservations, capped
from handoffd.handoff.staging import Staging
from handoffd.handoff.tables import InboxEntry
from handoffd.handoff.timings import Clock, Timings
from handoffd.proto import messages as m
from handoffd.store import HandoffRecord, Store
from handoffd.tasks import TaskSet

logger = logging.getLogger("handoffd.handoff.incoming")


class Incoming:
    """Handoffs this device receives."""

    def __init__(
        self,
        *,
        store: Store,
        records: Records,
        staging: Staging,
        device: DeviceState,
        settings: SettingsFile,
        local: LocalDevice,
        links: LinkPool,
        clock: Clock,
        timings: Timings,
        tasks: TaskSet,
        on_received: Callable[[InboxEntry], Awaitable[None]],
        consent: Consent | None = None,
    ) -> None:
        self.consent = consent
        self.store = store
        self.records = records
        self.db = records.db
        self.staging = staging
        self.device = device
        self.settings = settings
        self.local = local
        self.links = links
        self.clock = clock
        self.timings = timings
        self.tasks = tasks
        self.on_received = on_received
        self.reservations = Reservations()
        self.receiving: dict[str, asyncio.Task[None]] = {}
        self.lanes: LaneService | None = None
        """The LAN lane's listener and offers (set by the engine)."""
        self.committer = Committer(
            store=store, records=records, staging=staging, clock=clock, on_received=on_received
        )

    def receive(self, link: Link, ex: Exchange, first: bytes) -> None:
        """Run a receiver driver for the exchange the peer began on ``link``."""
        self.tasks.spawn(self._receive(link, ex, first), "receive")

    async def _receive(self, link: Link, ex: Exchange, first: bytes) -> None:
        task = asyncio.current_task()
        try:
            await run_receiver(
                link,
                ex,
                first,
                hello=self.local.hello(),
                staging=self.staging,
                consumer=ReceiverRecorder(self, link),
                stall=self.timings.stall_timeout,
                resumed_wait=self.timings.receiver_resumed_wait,
            )
        finally:
            self.reservations.release(ex.handoff_id, task)
            if ex.handoff_id and self.receiving.get(ex.handoff_id) is task:
                self.receiving.pop(ex.handoff_id, None)

    async def device_name(self, device_id: str) -> str:
        """The cached name of a device ('' if unknown)."""
        for d in await self.store.run(self.store.list_devices):
            if d.device_id == device_id:
                return d.name
        return ""

    async def end_older_exchange(self, link: Link, hid: str) -> None:
        """Another exchange of this handoff (an older connection) must end first."""
        older = self.receiving.get(hid)
        current = asyncio.current_task()
        if older is not None and older is not current and not older.done():
            for other in self.links.all():
                ex = other.exchange
                if other is not link and ex is not None and ex.handoff_id == hid:
                    await other.close()
            await asyncio.wait([older], timeout=10.0)  # our own cancellation goes through
        if current is not None:
            self.receiving[hid] = current

    async def decide(self, link: Link, offer: m.Offer, manifest: m.Manifest) -> Verdict:
        """Verify and decide an incoming offer (see policy.decide)."""
        trust = self.device.trust
        if trust is None:
            return Verdict(decline=("not-paired", "this device is not paired"))
        try:
            manifest = open_offer(
                offer,
                trust=trust,
                me=self.device.device_id,
                peer=link.peer_id,
                now=self.clock.wall(),
            )
            names = unique_names(i.name for i in manifest.items)
        except ProtocolError as exc:
            logger.warning("offer refused code=%s", exc.code, extra={"peer": link.peer_id})
            return Verdict(decline=(exc.code, exc.message))
        hid = manifest.handoff_id
        await self.end_older_exchange(link, hid)
        # The database's and the disk's view, read at once (two threads).
        facts, disk = await asyncio.gather(
            self.store.run(
                stored_facts,
                self.store,
                self.db,
                hid,
                link.peer_id,
                inbox_max=self.timings.inbox_max,
            ),
            asyncio.to_thread(disk_facts, self.staging, hid),
        )
        if facts.in_inbox:
            return Verdict(delivered=True)
        if facts.expired:
            return Verdict(decline=("expired", "this handoff expired on the receiving device"))
        peer_name = facts.peer_name
        if disk.committed is not None:
            await self.record_inbox(manifest, disk.committed, link.peer_id, peer_name)
            return Verdict(delivered=True)
        free = self.reservations.available(capped(disk.free, self.timings.disk_free_cap), hid)
        decision = decide(
            manifest,
            self.settings.current,
            free_bytes=free,
            held=disk.held,
            inbox_full=facts.inbox_full,
        )
        record = facts.record
        if record is not None and (record.direction != "in" or record.peer != link.peer_id):
            return Verdict(decline=("handoff-id-conflict", "handoff id already used"))
        if decision.reason is not None:
            # A decline is final for the sender: what we held of it can never be used. The
            # files go first (on a full disk that is the space the state database needs), and
            # the answer does not wait on recording it: the sender must hear the reason.
            await asyncio.to_thread(self.staging.discard_partial, hid)
            try:
                await self._record_decline(
                    link, manifest, offer, record, peer_name, decision.reason, decision.message
                )
            except StoreError as exc:
                logger.warning("decline not recorded error=%s", exc.code, extra={"handoff": hid})
            return Verdict(decline=(decision.reason, decision.message))
        stored, checkpoints = facts.meta, facts.checkpoints
        if self.consent is not None and (
            record is None or record.state in ("declined", "cancelled", "failed")
        ):
            asks = self.consent.policy(manifest.app_id, link.peer_id, peer_name) == "ask"
            refused = await self.consent.check(
                manifest, link.peer_id, peer_name, lambda: link.closed
            )
            if refused is not None:
                if refused[0] != "connection-lost":
                    await self._record_decline(link, manifest, offer, record, peer_name, *refused)
                return Verdict(decline=refused)
            if asks:
                # A person was asked (seconds may have passed): read again what may have moved.
                facts = await self.store.run(
                    stored_facts, self.store, self.db, hid, link.peer_id, inbox_max=0
                )
                record, stored, checkpoints = facts.record, facts.meta, facts.checkpoints
        if stored.offer is not None and stored.offer != offer.manifest:
            # A different manifest under the same id: start over, trust nothing held.
            await asyncio.to_thread(self.staging.discard_partial, hid)
            await self.store.run(self.db.clear_checkpoints, hid)
            checkpoints = {}
        if not decision.indexes:
            if record is None:
                await self._new_incoming(link, manifest)
            await self.records.set_meta(hid, peer_name=peer_name, offer=offer.manifest)
            await self.committer.announce(await self.commit(link, manifest, {}))
            return Verdict(delivered=True)
        resume = {i: checkpoints.get(i, 0) for i in decision.indexes}
        accepted_total = sum(i.size for i in manifest.items if i.index in resume)
        owner = asyncio.current_task()
        self.reservations.reserve(hid, accepted_total - sum(resume.values()), owner)
        await self.records.set(
            hid,
            {"peer_name": peer_name, "offer": offer.manifest},
            # One hop: a small session's answer waits on it.
            first=None if record is not None else functools.partial(self._row, link, manifest),
            state="transferring",
            path=link.channel.path,
            attempts=(0 if record is None else record.attempts) + 1,
            bytes_total=accepted_total,
            bytes_done=sum(resume.values()),
            types=sorted({i.type for i in manifest.items if i.index in resume}),
            error=None,
        )
        if any(resume.values()):
            logger.info("resuming a transfer held=%d", sum(resume.values()), extra={"handoff": hid})
        return Verdict(resume=resume, names={i: names[i] for i in resume}, peer_name=peer_name)

    async def _new_incoming(self, link: Link, manifest: m.Manifest) -> HandoffRecord:
        """Record an incoming handoff seen for the first time (``pending``)."""
        return await self.store.run(self._row, link, manifest)

    def _row(self, link: Link, manifest: m.Manifest) -> HandoffRecord:
        """``_new_incoming`` on the database thread."""
        return self.store.create_handoff(
            manifest.handoff_id,
            direction="in",
            peer=link.peer_id,
            state="pending",
            session_id=manifest.session_id,
            types=sorted({i.type for i in manifest.items}),
            bytes_total=sum(i.size for i in manifest.items),
        )

    async def _record_decline(
        self,
        link: Link,
        manifest: m.Manifest,
        offer: m.Offer,
        record: HandoffRecord | None,
        peer_name: str,
        reason: str,
        message: str,
    ) -> None:
        """The incoming record ``declined`` with ``reason``, its checkpoints gone."""
        hid = manifest.handoff_id
        if record is None:
            await self._new_incoming(link, manifest)
        await self.records.set_meta(hid, peer_name=peer_name, offer=offer.manifest)
        await self.store.run(self.db.clear_checkpoints, hid)
        await self.records.set(hid, {}, state="declined", error=error_text(reason, message))

    async def record_failed(self, handoff_id: str, code: str, message: str) -> None:
        """Record a receiving exchange that ended without delivering."""
        if not handoff_id:
            return
        record = await self.records.get(handoff_id)
        if (
            record is None
            or record.direction != "in"
            or record.state in ("delivered", "resumed", "declined")
        ):
            return
        if code == "cancelled":
            # The source gave up: nothing held is wanted any more.
            await asyncio.to_thread(self.staging.discard_partial, handoff_id)
            await self.store.run(self.db.clear_checkpoints, handoff_id)
            await self.records.set(
                handoff_id, {}, state="cancelled", error=error_text(code, message)
            )
            return
        await self.records.set(handoff_id, {}, state="retrying", error=error_text(code, message))

    async def commit(
        self,
        link: Link,
        manifest: m.Manifest,
        names: Mapping[int, str],
        held: Mapping[int, bytearray] | None = None,
        peer_name: str | None = None,
    ) -> Received:
        """Move the verified items into the inbox and record the entry (not yet announced)."""
        if peer_name is None:
            peer_name = await self.device_name(link.peer_id)
        return await self.committer.commit(manifest, names, link.peer_id, peer_name, held)

    async def record_inbox(
        self, manifest: m.Manifest, doc: Mapping[str, Any], peer: str, peer_name: str
    ) -> None:
        """The inbox entry of a committed handoff, the record ``delivered``, apps told."""
        await self.committer.announce(await self.committer.add(manifest, doc, peer, peer_name))


class ReceiverRecorder:
    """The one consumer of a receiver driver's events, for one exchange on ``link``."""

    def __init__(self, incoming: Incoming, link: Link) -> None:
        self.incoming = incoming
        self.link = link
        self.features: tuple[str, ...] = ()
        self.received: Received | None = None
        self.peer_name: str | None = None
        """The sender's name, as read while deciding the offer."""
        """Committed, announced once the sender was told (``Announce``)."""

    def _with_lane(self, verdict: Verdict, manifest: m.Manifest) -> Verdict:
        """The verdict with a lane offer when this exchange should move onto the lane."""
        lanes = self.incoming.lanes
        if lanes is None or verdict.resume is None or verdict.decline or verdict.delivered:
            return verdict
        sizes = {i.index: i.size for i in manifest.items}
        remaining = sum(sizes.get(i, 0) - off for i, off in verdict.resume.items())
        lane = lanes.offer(
            manifest.handoff_id,
            self.link.peer_id,
            path=self.link.channel.path,
            features=self.features,
            remaining=remaining,
        )
        return verdict if lane is None else dataclasses.replace(verdict, lane=lane)

    async def decide(self, event: OfferReceived) -> Verdict:
        """The verdict; a state database that cannot grow declines (``no-disk-space``)."""
        try:
            verdict = await self.incoming.decide(self.link, event.offer, event.manifest)
            if verdict.resume is not None:
                self.peer_name = verdict.peer_name
            return self._with_lane(verdict, event.manifest)
        except StoreError as exc:
            if exc.code != "store-full":
                raise
            logger.warning(
                "offer declined: the state database is full", extra={"peer": self.link.peer_id}
            )
            return Verdict(decline=("no-disk-space", "the receiving device's disk is full"))

    async def handle(self, event: ReceiverEvent) -> None:
        """Record ``event``."""
        rx = self.incoming
        if isinstance(event, PeerHello):
            self.features = tuple(event.hello.features)
            await rx.local.gossip(event.hello)
        elif isinstance(event, Progress):
            rx.reservations.progress(event.handoff_id, event.total - event.done)
            rx.records.progress(event.handoff_id, "in", event.done, event.total)
        elif isinstance(event, Checkpoint):
            await rx.store.run(rx.db.set_checkpoint, event.handoff_id, event.index, event.offset)
        elif isinstance(event, Commit):
            self.received = await rx.commit(
                self.link, event.manifest, event.names, event.held, self.peer_name
            )
        elif isinstance(event, Announce) and self.received is not None:
            received, self.received = self.received, None
            await rx.committer.announce(received)
        elif isinstance(event, Failed):
            # Never raises on a state database that cannot be written (a full disk): the
            # exchange still ends cleanly.
            try:
                await rx.record_failed(event.handoff_id, event.code, event.message)
            except StoreError as exc:
                logger.warning(
                    "receive failure not recorded code=%s error=%s",
                    event.code,
                    exc.code,
                    extra={"handoff": event.handoff_id},
                )
