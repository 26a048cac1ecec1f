"""The in-process event bus: ``publish(dict)`` fans out to subscribers with bounded queues.

A subscriber that falls ``maxsize`` events behind is dropped (its iterator
ends after what it had queued, with a final ``{"type": "dropped"}`` event);
publishing never blocks and never fails because of a slow subscriber.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

logger = logging.getLogger("handoffd.events")

DEFAULT_QUEUE = 256


class Subscription:
    """One subscriber's bounded queue; iterate it with ``async for``; ``close()`` idempotent."""

    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self._bus = bus
        # Bounded by _offer, not by the Queue, so the end marker (None) always fits.
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._maxsize = maxsize
        self.dropped = False
        self.closed = False

    def _offer(self, event: dict[str, Any]) -> bool:
        """Queue ``event``; False (and ended) if the subscriber is too far behind."""
        if self._queue.qsize() >= self._maxsize:
            self.dropped = True
            self._end({"type": "dropped", "reason": "subscriber too slow"})
            return False
        self._queue.put_nowait(event)
        return True

    def _end(self, last: dict[str, Any] | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        if last is not None:
            self._queue.put_nowait(last)
        self._queue.put_nowait(None)

    def close(self) -> None:
        """Stop receiving events (idempotent)."""
        self._bus._remove(self)
        self._end()

    async def get(self) -> dict[str, Any] | None:
        """The next event, or None once the subscription has ended."""
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # the end stays visible to later calls
        return item

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[dict[str, Any]]:
        while (event := await self.get()) is not None:
            yield event


class EventBus:
    """Fan-out of events to subscribers; each event gets ``seq`` and ``ts`` added."""

    def __init__(self, *, maxsize: int = DEFAULT_QUEUE) -> None:
        self._subscribers: set[Subscription] = set()
        self._maxsize = maxsize
        self._seq = itertools.count(1)

    def subscribe(self, *, maxsize: int | None = None) -> Subscription:
        """A new subscription receiving every event published from now on."""
        sub = Subscription(self, maxsize or self._maxsize)
        self._subscribers.add(sub)
        return sub

    @property
    def subscriber_count(self) -> int:
        """How many subscribers are attached."""
        return len(self._subscribers)

    def publish(self, event: dict[str, Any]) -> dict[str, Any]:
        """Send ``event`` (needs a ``type``) to every subscriber; return it as sent."""
        if not isinstance(event.get("type"), str):
            raise ValueError("an event needs a string 'type'")
        sent = {**event, "seq": next(self._seq), "ts": time.time()}
        for sub in list(self._subscribers):
            if not sub._offer(sent):
                self._subscribers.discard(sub)
                logger.warning("event subscriber dropped: too slow")
        return sent

    def _remove(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    def close(self) -> None:
        """End every subscription (idempotent)."""
        for sub in list(self._subscribers):
            sub.close()
