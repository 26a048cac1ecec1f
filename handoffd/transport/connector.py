"""Races dialers: direct first, the relay after a head start; the first authenticated channel wins.

``Connector([direct, relay], head_start=0.5).connect(peer, deadline=...)``
starts ``direct`` at once and ``relay`` ``head_start`` seconds later, or at
once when every earlier dialer already failed or says no path is plausible
(a dialer may have ``plausible(peer) -> bool``). The first channel returned
wins; every other attempt is cancelled, and a channel that loses a photo
finish is closed. Nothing keeps running after ``connect`` returns or raises,
including when the caller is cancelled.

``upgrade(channel, deadline=...)`` tries only the dialers ranked above the
one that made ``channel`` (the direct path while relayed) and returns a new
channel or None; ``Upgrader`` retries that now and then in the background and
holds the result for the transfer layer to ``take()`` at a chunk boundary.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from handoffd.errors import HandoffError, TransportError
from handoffd.transport.base import Channel, Dialer, PeerAuthError
from handoffd.transport.dialdoubt import doubting_calls

logger = logging.getLogger("handoffd.transport.connector")

HEAD_START = 0.5
"""A cold direct connection on the LAN returns in ~80-170 ms (p50-p95, lab, loaded): 0.5 s
keeps it winning (10/10 with UDP open) while a blocked one costs 0.5 s, not 1.75 s
(docs/benchmarks.md, issue #11)."""
LOST_HEAD_START = 0.25
"""The head start for a peer whose first dialer lost the last race while still trying."""
LOST_MEMORY = 600.0
"""How long (s) a lost race shortens the head start for that peer."""


@runtime_checkable
class Plausible(Protocol):
    """A dialer that can tell at once whether a path to a peer is worth trying."""

    def plausible(self, peer_device_id: str) -> bool:
        """False when this dialer certainly cannot reach the peer now."""


class NoPathError(TransportError):
    """Every dialer failed; ``attempts`` lists ``(dialer name, error)`` in start order."""

    default_code = "no-path"

    def __init__(
        self, message: str, *, attempts: Sequence[tuple[str, HandoffError]], code: str | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.attempts = tuple(attempts)


@dataclass
class _Attempt:
    index: int
    dialer: Dialer
    task: asyncio.Task[Channel]


class Connector:
    """Races ``dialers`` in preference order (see the module docstring)."""

    def __init__(
        self,
        dialers: Sequence[Dialer],
        *,
        head_start: float = HEAD_START,
        lost_head_start: float = LOST_HEAD_START,
        lost_memory: float = LOST_MEMORY,
    ) -> None:
        if not dialers:
            raise ValueError("a connector needs at least one dialer")
        self._dialers = tuple(dialers)
        self._head_start = head_start
        self._lost_head_start = min(head_start, lost_head_start)
        self._lost_memory = lost_memory
        self._lost: dict[str, float] = {}  # peer -> loop time a later dialer last won
        self._made_by: weakref.WeakKeyDictionary[Channel, int] = weakref.WeakKeyDictionary()

    @property
    def dialers(self) -> tuple[Dialer, ...]:
        """The dialers, most preferred first."""
        return self._dialers

    async def connect(self, peer_device_id: str, *, deadline: float) -> Channel:
        """The first authenticated channel to ``peer_device_id`` (``channel.path`` says which).

        ``deadline`` is event loop time. Raises PeerAuthError if an attempt
        failed authentication and none succeeded, else NoPathError (code
        ``no-path``, or ``connect-timeout`` when the deadline passed first).
        """
        loop = asyncio.get_running_loop()
        lost = self._lost.get(peer_device_id)
        recent = lost is not None and loop.time() - lost < self._lost_memory
        head_start = self._lost_head_start if recent else self._head_start
        channel = await self._race(self._dialers, peer_device_id, deadline, head_start)
        if self._made_by.get(channel) == 0:
            self._lost.pop(peer_device_id, None)
        else:  # the preferred path failed or was too slow: give it less time next time
            self._lost[peer_device_id] = loop.time()
        return channel

    async def upgrade(self, channel: Channel, *, deadline: float) -> Channel | None:
        """A channel over a better path than ``channel``'s, or None (nothing better, or failed)."""
        rank = self._made_by.get(channel, len(self._dialers))
        better = self._dialers[:rank]
        if not better or channel.closed:
            return None
        try:
            upgraded = await self._race(better, channel.peer.device_id, deadline, self._head_start)
        except TransportError as exc:
            logger.info("upgrade attempt failed code=%s", exc.code)
            return None
        if self._made_by.get(upgraded) == 0:
            self._lost.pop(channel.peer.device_id, None)  # the preferred path works again
        return upgraded

    async def _race(
        self, dialers: Sequence[Dialer], peer: str, deadline: float, head_start: float
    ) -> Channel:
        loop = asyncio.get_running_loop()
        attempts: list[_Attempt] = []
        errors: list[tuple[str, HandoffError]] = []
        winner: _Attempt | None = None
        next_index = 0
        next_start = loop.time()
        wake = asyncio.Event()

        def doubted(name: str) -> None:
            # The running dialer doubts its path: the next one starts now, not after the
            # head start (docs/transport.md, "early doubt").
            nonlocal next_start
            if next_index < len(dialers) and next_start > loop.time():
                logger.info("dialer doubts its path dialer=%s", name)
                next_start = loop.time()
                wake.set()

        try:
            while winner is None:
                now = loop.time()
                if now >= deadline:
                    break
                running = [a for a in attempts if not a.task.done()]
                # Start the next dialer when its head start is over or nothing else is running.
                while next_index < len(dialers) and (now >= next_start or not running):
                    dialer = dialers[next_index]
                    index = next_index
                    next_index += 1
                    if isinstance(dialer, Plausible) and not dialer.plausible(peer):
                        logger.info("no plausible path dialer=%s", dialer.name)
                        errors.append(
                            (dialer.name, TransportError("no plausible path", code="no-route"))
                        )
                        continue
                    with doubting_calls(functools.partial(doubted, dialer.name)):
                        task = asyncio.create_task(
                            dialer.dial(peer, deadline=deadline), name=f"dial-{dialer.name}"
                        )
                    attempts.append(_Attempt(index, dialer, task))
                    running.append(attempts[-1])
                    next_start = loop.time() + head_start
                    break
                if not running:
                    break
                until = deadline if next_index >= len(dialers) else min(deadline, next_start)
                wake.clear()
                woken = asyncio.create_task(wake.wait(), name="dial-doubt")
                try:
                    done, _ = await asyncio.wait(
                        [*(a.task for a in running), woken],
                        timeout=max(0.0, until - loop.time()),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    woken.cancel()
                for attempt in running:
                    if attempt.task not in done:
                        continue
                    exc = attempt.task.exception()
                    if exc is None:
                        if winner is None:
                            winner = attempt
                    elif isinstance(exc, HandoffError):
                        logger.info("dial failed dialer=%s code=%s", attempt.dialer.name, exc.code)
                        errors.append((attempt.dialer.name, exc))
                    else:
                        logger.error(
                            "dialer raised an unexpected error dialer=%s",
                            attempt.dialer.name,
                            exc_info=exc,
                        )
                        errors.append(
                            (attempt.dialer.name, TransportError(repr(exc), code="internal"))
                        )
        finally:
            try:
                await _cancel_losers(attempts, winner)
            except asyncio.CancelledError:
                if winner is not None:  # cancelled while tidying up: the winner goes too
                    await winner.task.result().close()
                raise
        if winner is not None:
            channel = winner.task.result()
            self._made_by[channel] = winner.index
            logger.info(
                "connected",
                extra={"peer": peer, "path": channel.path, "dialer": winner.dialer.name},
            )
            return channel
        for _, error in errors:
            if isinstance(error, PeerAuthError):
                raise error
        timed_out = loop.time() >= deadline
        summary = ", ".join(f"{name}: {e.code}" for name, e in errors) or "no dialer ran"
        raise NoPathError(
            f"no path to the device ({summary})",
            attempts=errors,
            code="connect-timeout" if timed_out else None,
        )


async def _cancel_losers(attempts: list[_Attempt], winner: _Attempt | None) -> None:
    """Cancel every attempt but the winner and wait for them; close channels that lost."""
    losers = [a for a in attempts if a is not winner]
    for attempt in losers:
        attempt.task.cancel()
    if not losers:
        return
    # Wait even if we are being cancelled ourselves: nothing may outlive connect().
    waiter = asyncio.ensure_future(asyncio.wait([a.task for a in losers]))
    cancelled = False
    while not waiter.done():
        try:
            await asyncio.shield(waiter)
        except asyncio.CancelledError:
            cancelled = True
    for attempt in losers:
        task = attempt.task
        if task.cancelled() or task.exception() is not None:
            continue
        channel = task.result()  # finished just before the cancel reached it
        logger.info("closing the losing channel dialer=%s", attempt.dialer.name)
        await channel.close()
    if cancelled:
        raise asyncio.CancelledError


class Upgrader:
    """While ``channel`` is on a worse path, retry the better ones now and then.

    Run ``run()`` in a task the caller owns; at a chunk boundary call
    ``take()``: a new, authenticated channel (the caller owns it and switches
    to it), or None. ``close()`` closes a channel nobody took.
    """

    def __init__(
        self,
        connector: Connector,
        channel: Channel,
        *,
        first_delay: float = 5.0,
        interval: float = 15.0,
        max_interval: float = 120.0,
        attempt_timeout: float = 10.0,
    ) -> None:
        self._connector = connector
        self._channel = channel
        self._first_delay = first_delay
        self._interval = interval
        self._max_interval = max_interval
        self._attempt_timeout = attempt_timeout
        self._ready: Channel | None = None
        self._closed = False
        self.attempts = 0

    async def run(self) -> None:
        """Retry until a better channel is ready, ``channel`` closes, or ``close()``."""
        loop = asyncio.get_running_loop()
        delay, interval = self._first_delay, self._interval
        while not self._stopped() and self._ready is None:
            await asyncio.sleep(delay)
            if self._stopped():
                return
            self.attempts += 1
            better = await self._connector.upgrade(
                self._channel, deadline=loop.time() + self._attempt_timeout
            )
            if better is not None:
                if self._stopped():
                    await better.close()
                    return
                logger.info("a better path is ready", extra={"path": better.path})
                self._ready = better
                return
            delay, interval = interval, min(interval * 2, self._max_interval)

    def _stopped(self) -> bool:
        return self._closed or self._channel.closed

    @property
    def ready(self) -> bool:
        """True when a better channel waits to be taken."""
        return self._ready is not None

    def take(self) -> Channel | None:
        """The better channel if one is ready (ownership passes to the caller), else None."""
        ready, self._ready = self._ready, None
        return ready

    async def close(self) -> None:
        """Stop and close a channel nobody took (idempotent; cancel ``run``'s task too)."""
        self._closed = True
        ready, self._ready = self._ready, None
        if ready is not None:
            await ready.close()


__all__ = ["HEAD_START", "Connector", "NoPathError", "Plausible", "Upgrader"]
