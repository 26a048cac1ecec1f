"""The receive queue, byte counting and closed-check shared by the WebRTC, relay and lane channels."""

from __future__ import annotations

import asyncio
import collections

from handoffd.errors import TransportError
from handoffd.transport.base import Channel


class QueuedChannel(Channel):
    """The receive queue and closed-state shared by channels that buffer decoded messages.

    A subclass calls ``_init_queue()`` in its constructor, appends what arrives to
    ``_queue`` (adding to ``_queued``, setting ``_readable``), keeps ``_closed``/``_error``,
    and may override ``_dequeued`` (e.g. to resume reading below a high-water mark).
    """

    path = ""
    _closed: bool
    _error: TransportError | None

    def _init_queue(self) -> None:
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._readable = asyncio.Event()
        self._closed = False
        self._error = None
        self.bytes_sent = 0
        self.bytes_received = 0

    def _closed_error(self) -> TransportError:
        """Why a send or recv on a closed channel fails (the failure, else channel-closed)."""
        return self._error or TransportError("channel closed", code="channel-closed")

    def _dequeued(self) -> None:
        """Called after a message left the queue (hook)."""

    async def _recv_raw(self) -> bytes:
        while not self._queue:
            if self._closed:
                raise self._closed_error()
            self._readable.clear()
            await self._readable.wait()
        data = self._queue.popleft()
        self._queued -= len(data)
        self._dequeued()
        return data

    async def recv(self) -> bytes:
        """The next message; after the peer closes, buffered messages first, then channel-closed."""
        data = await self._recv_raw()
        self.bytes_received += len(data)
        return data


__all__ = ["QueuedChannel"]
