"""In-memory channels and dialers: two ``Channel`` ends joined by queues, for driving links,
drivers and the engine in one process (tests, benchmarks). A pair can be cut mid-stream
(``cut``), or set to break after some bytes (``break_after``), as a lost connection does."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from handoffd import identity
from handoffd.errors import TransportError
from handoffd.transport.base import Channel, Dialer, check_message

_CLOSED = object()


class MemoryChannel(Channel):
    """One end of an in-memory pair."""

    def __init__(self, path: str, peer: identity.PeerIdentity) -> None:
        self.path = path
        self.peer = peer
        self.bytes_sent = 0
        self.bytes_received = 0
        self._inbox: asyncio.Queue[bytes | object] = asyncio.Queue()
        self._other: MemoryChannel | None = None
        self._closed = False
        self.break_after: int | None = None
        """If set: the pair breaks once this end has sent that many payload bytes."""
        self.pace = 0.0
        """Seconds each send takes (a slow path)."""

    async def send(self, data: bytes) -> None:
        """Deliver one message to the other end (TransportError once closed)."""
        check_message(data)
        other = self._other
        if self._closed or other is None or other._closed:
            raise TransportError("channel closed", code="channel-closed")
        if self.break_after is not None and self.bytes_sent + len(data) > self.break_after:
            self.cut()
            raise TransportError("connection lost", code="channel-closed")
        self.bytes_sent += len(data)
        other.bytes_received += len(data)
        other._inbox.put_nowait(bytes(data))
        await asyncio.sleep(self.pace)  # let the reader run, as a socket would

    async def recv(self) -> bytes:
        """The next message; TransportError(channel-closed) once closed and drained."""
        if self._closed and self._inbox.empty():
            raise TransportError("channel closed", code="channel-closed")
        item = await self._inbox.get()
        if item is _CLOSED or not isinstance(item, bytes):
            self._closed = True
            self._inbox.put_nowait(_CLOSED)
            raise TransportError("channel closed", code="channel-closed")
        return item

    def cut(self) -> None:
        """Break the pair at once (both ends closed, what is queued is lost)."""
        for end in (self, self._other):
            if end is not None and not end._closed:
                end._closed = True
                while not end._inbox.empty():
                    end._inbox.get_nowait()
                end._inbox.put_nowait(_CLOSED)

    async def close(self) -> None:
        """Close both ends (idempotent)."""
        self.cut()

    @property
    def closed(self) -> bool:
        """True once either end closed."""
        return self._closed


def channel_pair(
    path: str, a: identity.PeerIdentity, b: identity.PeerIdentity
) -> tuple[MemoryChannel, MemoryChannel]:
    """Two joined ends: the first is ``a``'s (its peer is ``b``), the second ``b``'s."""
    end_a, end_b = MemoryChannel(path, b), MemoryChannel(path, a)
    end_a._other, end_b._other = end_b, end_a
    return end_a, end_b


Accept = Callable[[Channel], object]


class MemoryDialer(Dialer):
    """Dials devices registered on a ``MemoryNetwork`` over one path."""

    def __init__(self, network: MemoryNetwork, me: identity.PeerIdentity, name: str) -> None:
        self.network = network
        self.me = me
        self.name = name
        self.path = name
        self.pace = 0.0
        """Seconds each send of the channels it makes takes (a slow path)."""
        self.breaks: list[int] = []
        """Each new channel takes the first of these as its ``break_after`` (then it is gone)."""
        self.reachable = True
        """False: every dial fails (``no-route``), as an unreachable path does."""
        self.dialed: list[MemoryChannel] = []

    async def dial(self, peer_device_id: str, *, deadline: float) -> Channel:
        """A new pair to ``peer_device_id``: its end goes to the peer's accept callback."""
        accept = self.network.listeners.get(peer_device_id)
        if not self.reachable or accept is None:
            raise TransportError("no route", code="no-route")
        peer = self.network.identities[peer_device_id]
        ours, theirs = channel_pair(self.path, self.me, peer)
        ours.pace = theirs.pace = self.pace
        if self.breaks:
            ours.break_after = self.breaks.pop(0)
        self.dialed.append(ours)
        accept(theirs)
        return ours


class MemoryNetwork:
    """Devices that can dial each other in memory."""

    def __init__(self) -> None:
        self.listeners: dict[str, Accept] = {}
        self.identities: dict[str, identity.PeerIdentity] = {}

    def join(self, peer: identity.PeerIdentity, accept: Accept) -> None:
        """Register a device and what takes the channels dialed to it."""
        self.listeners[peer.device_id] = accept
        self.identities[peer.device_id] = peer
