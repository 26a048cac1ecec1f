"""Outgoing handoffs: validate and record a request, then one task per handoff that connects,
runs the sender driver, and retries with backoff until delivered, declined, failed or
cancelled (also after a restart)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from handoffd.config import SettingsFile
from handoffd.errors import (
    ConflictError,
    HandoffError,
    PathSwitchError,
    StoreError,
    TransferError,
)
from handoffd.handoff import retry
from handoffd.handoff.driver import run_sender
from handoffd.handoff.driver_events import (
    Delivered,
    LaneOffer,
    PeerHello,
    Progress,
    Resumed,
    SenderEvent,
    Transferring,
)
from handoffd.handoff.lanes import LaneSwitch
from handoffd.handoff.link import Link
from handoffd.handoff.links import LinkPool
from handoffd.handoff.local import LocalDevice
from handoffd.handoff.offer import (
    SourceItem,
    build_manifest,
    new_handoff_id,
    sign_offer,
    sources_for,
)
from handoffd.handoff.presence import Presence
from handoffd.handoff.records import OUT_ACTIVE, HandoffUpdate, Records, error_text
from handoffd.handoff.sendcheck import check_types, sendable_session
from handoffd.handoff.targets import resolve_target
from handoffd.handoff.timings import Clock, Timings
from handoffd.handoff.waiting import DeviceWait
from handoffd.proto import codec
from handoffd.proto import messages as m
from handoffd.store import HandoffRecord, Store
from handoffd.tasks import TaskSet
from handoffd.transport.base import PATH_RELAY
from handoffd.transport.connector import Upgrader

logger = logging.getLogger("handoffd.handoff.outgoing")


class Outgoing:
    """Handoffs this device sends."""

    def __init__(
        self,
        *,
        store: Store,
        records: Records,
        settings: SettingsFile,
        local: LocalDevice,
        presence: Presence,
        links: LinkPool,
        clock: Clock,
        timings: Timings,
        tasks: TaskSet,
    ) -> None:
        self.store = store
        self.records = records
        self.settings = settings
        self.local = local
        self.presence = presence
        self.links = links
        self.clock = clock
        self.timings = timings
        self.tasks = tasks
        self.running: dict[str, asyncio.Task[None]] = {}
        self.waiting = DeviceWait(
            presence=presence, records=records, settings=settings, clock=clock
        )
        self._cancelled: set[str] = set()

    async def start(
        self, session_id: str, target: str, types: Sequence[str] | None
    ) -> HandoffRecord:
        """Validate, record (``pending``) and start a handoff of ``session_id`` to ``target``."""
        session = await sendable_session(self.store, self.local, session_id)
        peer_id, peer_name = await resolve_target(
            self.store,
            target,
            me=self.local.device_id,
            my_name=self.settings.current.device_name,
            refresh=self.presence.refresh_devices,
        )
        chosen = None if types is None else set(check_types(types, session.items))
        items = [i for i in session.items if chosen is None or i.type in chosen]
        handoff_id = new_handoff_id()
        manifest, sources = await asyncio.to_thread(
            build_manifest,
            handoff_id=handoff_id,
            session_id=session.id,
            app_id=session.app_id,
            title=session.title,
            context=session.context,
            items=items,
            sender=self.local.device_id,
            recipient=peer_id,
            now=self.clock.wall(),
        )
        local = self.local.identity()
        offer = sign_offer(local.key, local.cert_der, manifest)
        record = await self.store.run(
            self.store.create_handoff,
            handoff_id,
            direction="out",
            peer=peer_id,
            state="pending",
            session_id=session.id,
            types=sorted({i.type for i in items}) if types is None else list(types),
            bytes_total=sum(i.size for i in manifest.items),
        )
        await self.records.set_meta(handoff_id, peer_name=peer_name, offer=codec.encode(offer))
        self.records.publish_state(record)
        self.drive(handoff_id, Prepared(record, offer, manifest, sources))
        return record

    def drive(self, handoff_id: str, prepared: Prepared | None = None) -> None:
        """Start the task that carries ``handoff_id`` through (``prepared``: what ``start``
        just built, so the first attempt does not read it back)."""
        task = self.tasks.spawn(self._drive(handoff_id, prepared), f"handoff-{handoff_id[:8]}")
        self.running[handoff_id] = task
        task.add_done_callback(lambda _t: self.running.pop(handoff_id, None))

    async def restart(self) -> None:
        """After a restart, carry on with outgoing handoffs that had not finished."""
        for record in await self.store.run(self.store.list_handoffs, limit=1000):
            if record.direction == "out" and record.state in OUT_ACTIVE:
                logger.info("resuming an outgoing handoff", extra={"handoff": record.id})
                self.drive(record.id)

    async def cancel(self, handoff_id: str) -> HandoffRecord:
        """Cancel an outgoing handoff that is not yet delivered (idempotent once cancelled)."""
        record = await self.records.require(handoff_id)
        if record.state == "cancelled":
            return record
        if record.direction != "out" or record.state not in OUT_ACTIVE:
            raise ConflictError(
                f"a handoff that is {record.state} cannot be cancelled", code="not-cancellable"
            )
        self._cancelled.add(handoff_id)
        task = self.running.get(handoff_id)
        if task is not None:
            task.cancel()
            # Wait for it to tell the peer; our own cancellation still goes through.
            await asyncio.wait([task], timeout=10.0)
        record = await self.records.require(handoff_id)
        if record.state != "cancelled" and record.state in OUT_ACTIVE:
            record = await self.records.set(handoff_id, {"next_retry_at": None}, state="cancelled")
        return record

    async def on_resumed(self, handoff_id: str, peer: str | None) -> bool:
        """The target resumed our handoff: hand the session off; False if not ours."""
        record = await self.records.get(handoff_id)
        if (
            record is None
            or record.direction != "out"
            or (peer is not None and record.peer != peer)
        ):
            return False
        if record.state == "resumed":
            return True
        if record.session_id is not None:
            try:
                await self.store.run(self.store.set_session_state, record.session_id, "handed-off")
            except StoreError as exc:
                logger.warning("session not marked handed off error=%s", exc.code)
        await self.records.set(handoff_id, {"next_retry_at": None}, state="resumed", error=None)
        self.records.events.publish(
            {
                "type": "handoff.resumed",
                "handoff_id": handoff_id,
                "direction": "out",
                "session_id": record.session_id,
            }
        )
        task = self.running.get(handoff_id)
        if task is not None and task is not asyncio.current_task():
            task.cancel()  # stop lingering on the link: it is over
        return True

    async def _sources(self, record: HandoffRecord, manifest: m.Manifest) -> dict[int, SourceItem]:
        """Where each manifest item is read: the session's item of the same name."""
        session = None
        if record.session_id is not None:
            session = await self.store.run(self.store.get_session, record.session_id)
        if session is None:
            raise TransferError("the session is gone", code="session-not-found", retry=False)
        return sources_for(session.items, manifest)

    async def _drive(self, handoff_id: str, prepared: Prepared | None) -> None:
        """Connect, send, retry with backoff until delivered, declined, failed or cancelled."""
        try:
            await self._attempts(
                handoff_id, prepared or await _read_prepared(self.records, handoff_id)
            )
        except asyncio.CancelledError:
            if handoff_id in self._cancelled:
                try:
                    await self.records.set(handoff_id, {"next_retry_at": None}, state="cancelled")
                    logger.info("handoff cancelled", extra={"handoff": handoff_id})
                except HandoffError as exc:
                    logger.warning("cancel not recorded error=%s", exc.code)
            raise
        except Exception:
            logger.exception("handoff task failed", extra={"handoff": handoff_id})
            with contextlib.suppress(HandoffError):
                await self.records.set(
                    handoff_id, {}, state="failed", error=error_text("internal", "internal error")
                )

    async def _attempts(self, handoff_id: str, prepared: Prepared) -> None:
        record, offer, manifest = prepared.record, prepared.offer, prepared.manifest
        ready = prepared.sources
        if self.waiting.should_wait(record):
            if not await self.waiting.wait(record):
                return
            record = await self.records.require(handoff_id)
        attempts = record.attempts
        moved: Link | None = None  # a better link taken at a chunk boundary
        t = self.timings
        while True:
            link, moved = moved, None
            on_path = False  # the record shows this link's path
            if link is None:
                attempts += 1
                record, link = await _connecting(self.records, self.links, record, attempts)
                on_path = link is not None
            upgrader: Upgrader | None = None
            upgrading: asyncio.Task[None] | None = None
            lane = LaneSwitch(local=self.local, timings=t, tasks=self.tasks)
            try:
                sources = ready or await self._sources(record, manifest)
                ready = None  # a retry reads the session again
                if link is None:
                    link = await self.links.link_to(record.peer)
                if not on_path:
                    await self.records.set(handoff_id, {}, path=link.channel.path)
                upgrader = self.links.upgrader(link)
                if upgrader is not None:
                    upgrading = self.tasks.spawn(upgrader.run(), "path-upgrade")
                relayed = link.channel.path == PATH_RELAY
                up = upgrader
                report = await run_sender(
                    link,
                    hello=self.local.hello(),
                    offer=offer,
                    manifest=manifest,
                    sources=sources,
                    consumer=_SenderRecorder(self, handoff_id, up, lane, link.peer_id).on_event,
                    # A relay session is the server's to share: do not hold one to wait for
                    # `resumed` (it comes by notice) nor keep it warm.
                    resumed_wait=0.0 if relayed else t.resumed_wait,
                    cancelled=lambda: handoff_id in self._cancelled,
                    switch=_switch_check(up, lane),
                    lane_offered=functools.partial(lane.offered, link.peer_id),
                    before_bulk=lane.settle,
                    stall=t.stall_timeout,
                    answer_wait=t.offer_answer,
                )
                logger.info(
                    "handoff sent data_bytes=%d skipped=%d",
                    report.data_bytes,
                    report.skipped,
                    extra={"handoff": handoff_id},
                )
                if relayed:
                    await link.close()
                return
            except PathSwitchError:
                better = None if upgrader is None else upgrader.take()
                better = better or lane.take()
                if link is not None:
                    await link.close()
                if better is not None:
                    moved = self.links.adopt(better)
                    logger.info(
                        "transfer moves to a better path path=%s",
                        better.path,
                        extra={"handoff": handoff_id},
                    )
                continue
            except TransferError as exc:
                if not exc.retry:
                    state = "failed" if exc.code in retry.LOCAL_FAILURES else "declined"
                    await self.records.set(
                        handoff_id,
                        {"next_retry_at": None},
                        state=state,
                        error=error_text(exc.code, exc.message),
                    )
                    return
                error: HandoffError = exc
            except HandoffError as exc:
                error = exc
            finally:
                if link is not None:
                    link.release()  # taken but never begun (failure or cancel before it)
                if upgrading is not None:
                    upgrading.cancel()
                if upgrader is not None:
                    await upgrader.close()
                await lane.close()
            if link is not None and error.code != "link-busy":
                await link.close()  # never reuse a connection that just failed
            if not await self._retry(handoff_id, error, attempts):
                return

    async def _retry(self, handoff_id: str, error: HandoffError, attempts: int) -> bool:
        """Record a failed attempt; after the backoff, True to try again (False: it ended)."""
        record = await self.records.require(handoff_id)
        if record.state in ("delivered", "resumed"):
            return False
        reason = retry.reason(error)
        logger.info(
            "handoff attempt failed code=%s reason=%s attempt=%d",
            error.code,
            reason,
            attempts,
            extra={"handoff": handoff_id},
        )
        t = self.timings
        final = retry.refusal_is_final(error) or attempts >= t.max_attempts
        delay = 0.0 if final else retry.backoff(attempts, base=t.backoff_base, cap=t.backoff_max)
        await self.records.set(
            handoff_id,
            {"next_retry_at": None if final else self.clock.wall() + delay},
            state="failed" if final else "retrying",
            error=error_text(error.code, error.message, reason),
        )
        if final:
            return False
        await asyncio.sleep(delay)
        return True


@dataclass(frozen=True, slots=True)
class Prepared:
    """An outgoing handoff's record, signed offer, manifest and (just built) sources."""

    record: HandoffRecord
    offer: m.Offer
    manifest: m.Manifest
    sources: dict[int, SourceItem] | None


async def _connecting(
    records: Records, links: LinkPool, record: HandoffRecord, attempts: int
) -> tuple[HandoffRecord, Link | None]:
    """Record attempt ``attempts`` as ``connecting``, with the path of a warm link at hand
    (then reserved and returned: one write, not two)."""
    link = links.lingering(record.peer)
    fields: HandoffUpdate = {"state": "connecting", "attempts": attempts}
    if link is not None:
        fields["path"] = link.channel.path
    try:
        record = await records.set(record.id, {"next_retry_at": None}, **fields)
    except BaseException:
        if link is not None:
            link.release()
        raise
    return record, link


async def _read_prepared(records: Records, handoff_id: str) -> Prepared:
    """What ``Outgoing.start`` built, read back (a restart, a device that came back)."""
    record = await records.require(handoff_id)
    meta = await records.store.run(records.db.meta, handoff_id)
    if meta.offer is None:
        raise TransferError("no offer recorded", code="internal", retry=False)
    offer = codec.decode(meta.offer)
    if not isinstance(offer, m.Offer):  # pragma: no cover - we wrote it
        raise TransferError("bad offer recorded", code="internal", retry=False)
    manifest = codec.decode(offer.manifest)
    if not isinstance(manifest, m.Manifest):  # pragma: no cover - we wrote it
        raise TransferError("bad offer recorded", code="internal", retry=False)
    return Prepared(record, offer, manifest, None)


def _switch_check(upgrader: Upgrader | None, lane: LaneSwitch) -> Callable[[], bool]:
    """Asked at each chunk boundary: is a better path ready (direct while relayed, the lane)?"""
    if upgrader is None:
        return lambda: lane.ready
    return lambda: upgrader.ready or lane.ready


class _SenderRecorder:
    """The one consumer of a sender driver's events: records them on the handoff."""

    def __init__(
        self,
        outgoing: Outgoing,
        handoff_id: str,
        upgrader: Upgrader | None,
        lane: LaneSwitch,
        peer: str,
    ) -> None:
        self.out = outgoing
        self.handoff_id = handoff_id
        self.upgrader = upgrader
        self.lane = lane
        self.peer = peer

    async def on_event(self, event: SenderEvent) -> None:
        """Record ``event``."""
        records, hid = self.out.records, self.handoff_id
        if isinstance(event, PeerHello):
            await self.out.local.gossip(event.hello)
        elif isinstance(event, LaneOffer):
            self.lane.offered(self.peer, event.lane)
        elif isinstance(event, Transferring):
            report = event.report
            await records.set(
                hid,
                {"skipped": report.skipped},
                state="transferring",
                bytes_total=report.total,
                bytes_done=report.skipped,
                error=None,
            )
        elif isinstance(event, Progress):
            records.progress(hid, "out", event.done, event.total)
        elif isinstance(event, Delivered):
            report = event.report
            total, skipped = report.total, report.skipped
            if not report.accepted:
                # Delivered at once: the receiver already had it all (an earlier exchange
                # committed, but its ``delivered`` never reached us).
                total = skipped = (await records.require(hid)).bytes_total
            await records.set(
                hid,
                {
                    "data_bytes": report.data_bytes,
                    "channel_bytes": report.channel_bytes,
                    "skipped": skipped,
                },
                state="delivered",
                bytes_done=total,
                error=None,
            )
            if self.upgrader is not None:
                await self.upgrader.close()  # nothing left to move
        elif isinstance(event, Resumed):
            await self.out.on_resumed(hid, None)
