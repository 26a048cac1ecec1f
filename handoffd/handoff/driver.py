"""The drivers: one exchange each, driving a sans-IO core of ``proto.transfer`` over a link.

A driver emits typed events to its one consumer: the sender's (peer hello, transferring,
progress, delivered, resumed) and the receiver's (peer hello, offer received → the consumer's
verdict, checkpoint, progress, commit, failed). Disk reads, writes, fsyncs and hashing run in
threads; a checkpoint is recorded before the core may acknowledge. Telling the source that the
session was resumed goes through the receiver's driver too (``Exchange.ask_resumed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from handoffd.errors import (
    HandoffError,
    PathSwitchError,
    ProtocolError,
    StoreError,
    TransferError,
    TransportError,
)
from handoffd.handoff.deadlines import StallWatch
from handoffd.handoff.driver_events import (
    Delivered,
    Failed,
    LaneOffer,
    PeerHello,
    Progress,
    Resumed,
    SenderEvent,
    SendReport,
    Transferring,
)
from handoffd.handoff.link import WINDOW, Exchange, Link
from handoffd.handoff.offer import SourceItem, read_chunks
from handoffd.handoff.receiving import ReceiverConsumer, Receiving
from handoffd.handoff.staging import Staging
from handoffd.proto import messages as m
from handoffd.proto import transfer as core

logger = logging.getLogger("handoffd.handoff.driver")

SenderConsumer = Callable[[SenderEvent], Awaitable[None]]
"""The one consumer of a sender driver's events."""

OFFER_TIMEOUT = 30.0


# ---------------------------------------------------------------- driving a core


async def _tell_resumed(
    link: Link, ex: Exchange, c: core.SenderCore | core.ReceiverCore, now: float
) -> None:
    """Tell the peer ``resumed`` on this delivered exchange (asked by ``ex.ask_resumed``)."""
    if not isinstance(c, core.ReceiverCore) or c.state != core.State.DELIVERED or link.closed:
        ex.answer_resumed(sent=False)
        return
    c.resumed(now)
    try:
        await _flush(link, c)
    except HandoffError:
        ex.answer_resumed(sent=False)
        raise
    ex.answer_resumed(sent=True)


async def _flush(link: Link, c: core.SenderCore | core.ReceiverCore) -> None:
    for msg in c.outgoing():
        await link.send(msg)


async def _step(
    ex: Exchange, c: core.SenderCore | core.ReceiverCore, loop_time: Callable[[], float]
) -> bool:
    """Wait for the next message or timer and feed it, plus whatever else is queued.

    False if the link closed before anything arrived.
    """
    deadline = c.next_timer()
    try:
        data = await ex.next(60.0 if deadline is None else deadline - loop_time())
    except TimeoutError:
        c.timer(loop_time())
        return True
    if data is None:
        return False
    if isinstance(data, bytes):
        c.receive_bytes(data, loop_time())
    for _ in range(64):
        if ex.queue.empty() or c.finished:
            break
        more = ex.queue.get_nowait()
        if more is None:
            ex.queue.put_nowait(None)  # seen on the next step
            break
        if isinstance(more, bytes):
            ex.queued -= len(more)
            c.receive_bytes(more, loop_time())
    return True


async def run_sender(
    link: Link,
    *,
    hello: m.Hello,
    offer: m.Offer,
    manifest: m.Manifest,
    sources: Mapping[int, SourceItem],
    consumer: SenderConsumer,
    resumed_wait: float,
    cancelled: Callable[[], bool] = lambda: False,
    switch: Callable[[], bool] = lambda: False,
    stall: float,
    answer_wait: float = OFFER_TIMEOUT,
    lane_offered: Callable[[m.Lane], None] | None = None,
    before_bulk: Callable[[], Awaitable[None]] | None = None,
) -> SendReport:
    """One sending exchange: offer, stream, until delivered (then linger for ``resumed``).

    Returns once delivered and either resumed or ``resumed_wait`` passed; raises
    TransferError (declined: retry False, code = the peer's reason) otherwise.
    If the task is cancelled and ``cancelled()`` says the user asked for it, the
    peer is told (``cancel``) before the CancelledError goes on. While streaming,
    ``switch()`` is asked at each chunk boundary; True ends this exchange with
    ``PathSwitchError`` so the caller can carry on over a better channel (the receiver
    keeps what it acknowledged; the next offer resumes from there). A receiver that lets
    the stream make no progress for ``stall`` seconds ends it (``stalled``, retried).
    """
    loop = asyncio.get_running_loop()
    ex = link.begin(manifest.handoff_id, "sender")
    ex.on_lane = lane_offered
    c = core.SenderCore(hello, offer, manifest, now=loop.time(), window=WINDOW)
    ex.core = c
    report = SendReport()
    start_bytes = link.channel.bytes_sent
    delivered_at: float | None = None
    answer_by = loop.time() + answer_wait  # the receiver's person may be asked
    watch = StallWatch(loop.time())
    try:
        c.start(loop.time())
        while True:
            events = c.events()
            needs = [e for e in events if isinstance(e, core.NeedData)]
            if needs:
                await _read_for(c, needs, sources)
            for event in events:
                if isinstance(event, core.PeerHello):
                    await consumer(PeerHello(event.hello))
                elif isinstance(event, core.Accepted):
                    report.accepted = dict(event.resume)
                    report.total = sum(sources[i].entry.size for i in event.resume)
                    report.skipped = sum(event.resume.values())
                    await consumer(Transferring(manifest.handoff_id, report))
                elif isinstance(event, core.Progress):
                    await consumer(Progress(manifest.handoff_id, event.done, event.total))
                elif isinstance(event, core.Delivered):
                    delivered_at = loop.time()
                    report.data_bytes = c.sent_bytes
                    report.channel_bytes = link.channel.bytes_sent - start_bytes
                    await consumer(Delivered(manifest.handoff_id, report))
                elif isinstance(event, core.Resumed):
                    await consumer(Resumed(manifest.handoff_id))
                    return report
                elif isinstance(event, core.LaneOffered):
                    await consumer(LaneOffer(event.lane))
                elif isinstance(event, core.Declined):
                    raise TransferError(event.message or "declined", code=event.reason, retry=False)
                elif isinstance(event, core.Cancelled):
                    raise TransferError(
                        f"cancelled by the peer: {event.reason}",
                        code="peer-cancelled",
                        retry=False,
                    )
                elif isinstance(event, core.Failed):
                    raise TransferError(event.message, code=event.code)
            if c.state == core.State.STREAMING and before_bulk is not None:
                hold, before_bulk = before_bulk, None
                await hold()  # once: e.g. the lane offered with the answer is dialled first
            if c.state == core.State.STREAMING:
                # A chunk boundary after each message: a better path ready stops the flush
                # (what was not sent is not acknowledged; the next offer resumes from there).
                for msg in c.outgoing():
                    if switch():
                        raise PathSwitchError("a better path is ready", code="path-switch")
                    await link.send(msg)
            await _flush(link, c)
            report.data_bytes = c.sent_bytes
            report.channel_bytes = link.channel.bytes_sent - start_bytes
            if events:
                continue  # handling events may have made more
            if c.state == core.State.STREAMING and switch():
                raise PathSwitchError("a better path is ready", code="path-switch")
            now = loop.time()
            if delivered_at is not None and now - delivered_at >= resumed_wait:
                return report
            watch.observe((c.state, c.sent_bytes, c.done), now)
            if c.state == core.State.STREAMING and watch.quiet_for(now) >= stall:
                raise TransferError(f"no progress for {stall:g} s", code="stalled")
            if c.state == core.State.AWAIT_ANSWER and now > answer_by:
                raise TransferError("the peer did not answer the offer", code="offer-timeout")
            if not await _step(ex, c, loop.time):
                if delivered_at is not None:
                    return report
                raise TransferError(_lost(link), code="connection-lost")
    except asyncio.CancelledError:
        if cancelled() and not c.finished:
            c.cancel("cancelled", loop.time())
            with contextlib.suppress(HandoffError, TimeoutError):
                async with asyncio.timeout(2.0):
                    await asyncio.shield(_flush(link, c))
        raise
    finally:
        link.end(ex)


def _lost(link: Link) -> str:
    """ "connection lost", with the channel's reason when it failed (``peer-silent``...)."""
    err = link.error
    if err is None or err.code == "channel-closed":
        return "connection lost"
    return f"connection lost ({err.code}: {err.message})"


async def _read_for(
    c: core.SenderCore, needs: Sequence[core.NeedData], sources: Mapping[int, SourceItem]
) -> None:
    """Read what NeedData events ask for (every item in one thread hop) and hand it to the core."""
    by_item: dict[int, list[core.NeedData]] = {}
    for need in needs:
        by_item.setdefault(need.index, []).append(need)
    groups = list(by_item.items())

    def read_all() -> list[list[bytes]]:
        return [read_chunks(sources[index], group) for index, group in groups]

    # Items held in memory (messages, context) are sliced here; files are read in a thread.
    in_memory = all(sources[index].data is not None for index, _ in groups)
    read = read_all() if in_memory else await asyncio.to_thread(read_all)
    now = asyncio.get_running_loop().time()
    for (_, group), chunks in zip(groups, read, strict=True):
        for need, data in zip(group, chunks, strict=True):
            c.data_ready(need.index, need.offset, data, now)


async def run_receiver(
    link: Link,
    ex: Exchange,
    first: bytes,
    *,
    hello: m.Hello,
    staging: Staging,
    consumer: ReceiverConsumer,
    stall: float,
    resumed_wait: float,
) -> None:
    """One receiving exchange on ``link``, starting with the peer's hello ``first``; it ends
    after ``stall`` seconds without progress (``stalled``), or ``resumed_wait`` after delivery."""
    loop = asyncio.get_running_loop()
    c = core.ReceiverCore(hello, now=loop.time(), window=WINDOW)
    ex.core = c
    rx = Receiving(c, ex, staging, consumer, loop.time, functools.partial(_flush, link, c))
    watch = StallWatch(loop.time())
    try:
        c.start(loop.time())
        c.receive_bytes(first, loop.time())
        while True:
            events = c.events()
            await rx.handle(events)
            if rx.lane is not None and rx.lane_early:  # just before the accept
                lane, rx.lane = rx.lane, None
                await link.send(lane)
            await _flush(link, c)
            if rx.lane is not None:  # after the accept: the lane for the rest of the data
                lane, rx.lane = rx.lane, None
                await link.send(lane)
            if c.finished:
                return
            if events:
                continue
            if ex.resume_asked is not None and not ex.resume_asked.done():
                await _tell_resumed(link, ex, c, loop.time())
                continue
            watch.observe((c.state, c.done), loop.time())
            if c.state == core.State.DELIVERED:
                if watch.quiet_for(loop.time()) >= resumed_wait:
                    return  # the app's resumed, if it comes, goes by notice
            elif watch.quiet_for(loop.time()) >= stall:
                for index in list(rx.writers):
                    await rx.checkpoint(index)  # what arrived is kept for the resume
                raise TransferError(f"no progress for {stall:g} s", code="stalled")
            if not await _step(ex, c, loop.time):
                if c.state not in (core.State.DELIVERED, core.State.DECLINED):
                    await consumer.handle(
                        Failed(ex.handoff_id, "connection-lost", "connection lost")
                    )
                return
    except TransportError as exc:
        # The channel failed under us (a send after the peer left, a path switch): what was
        # acknowledged is durable, the next offer resumes from there.
        if c.state not in (core.State.DELIVERED, core.State.DECLINED):
            await consumer.handle(
                Failed(ex.handoff_id, "connection-lost", f"connection lost: {exc.code}")
            )
    except (ProtocolError, OSError, TransferError, StoreError) as exc:
        # The peer is told why (it retries; its next offer meets the receiver's policy, e.g.
        # no-disk-space), and the link is closed whatever recording the failure does.
        if isinstance(exc, OSError):
            logger.warning("receive failed on disk: %s", exc, extra={"peer": link.peer_id})
            exc = ProtocolError(f"receiver storage error: {exc.strerror}", code="receiver-io-error")
        elif isinstance(exc, StoreError):
            logger.warning(
                "receive failed on the state database: %s",
                exc.message,
                extra={"peer": link.peer_id},
            )
        logger.info("receive failed: %s", exc.code, extra={"peer": link.peer_id})
        try:
            with contextlib.suppress(HandoffError):
                await link.send(m.Error(code=exc.code[:64], message=exc.message[:1024]))
            await consumer.handle(Failed(ex.handoff_id, exc.code, exc.message))
        finally:
            await link.close()
    finally:
        ex.answer_resumed(sent=False)
        rx.close()
        link.end(ex)
