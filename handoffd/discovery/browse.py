"""Browsing: which advertisements are the account's devices, resolving them, and the table of
peers nearby and lost (with the events the owner is told)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf._dns import DNSPointer
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from handoffd.discovery.dns import CLASS_IN, QM, TYPE_PTR
from handoffd.discovery.liveness import Liveness
from handoffd.discovery.txt import SERVICE_TYPE, MarkerBook, decode_txt, marker_of

logger = logging.getLogger("handoffd.discovery")

RESOLVE_TIMEOUT_MS = 3000
MAX_RESOLVING = 32

Via = Literal["mdns", "unicast"]


@dataclass(frozen=True, slots=True)
class PeerSighting:
    """A device of our account seen on the LAN (``last_seen``: Unix time)."""

    device_id: str
    addresses: tuple[str, ...]
    port: int
    last_seen: float
    instance: str = ""
    host: str = ""
    via: Via = "mdns"


@dataclass(frozen=True, slots=True)
class DiscoveryEvent:
    """A peer became nearby (or moved: new addresses or port), or is gone."""

    kind: Literal["nearby", "gone"]
    peer: PeerSighting


def mono() -> float:
    """The clock of liveness decisions (monotonic)."""
    return time.monotonic()


def seen(peer: PeerSighting, now: float) -> PeerSighting:
    """``peer`` heard from at ``now``."""
    return replace(peer, last_seen=now)


class PeerBrowser:
    """Tracks the account's devices among the advertisements: nearby, lost, and by name."""

    def __init__(
        self,
        *,
        device_id: str,
        marker_key: bytes,
        known_devices: Callable[[], Iterable[str]],
        on_change: Callable[[DiscoveryEvent], None],
        live: Liveness,
        zeroconf: Callable[[], AsyncZeroconf | None],
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
        clock: Callable[[], float],
    ) -> None:
        """``zeroconf`` returns the running responder (None while it is down)."""
        self.device_id = device_id
        self._known = known_devices
        self._on_change = on_change
        self._live = live
        self._zeroconf = zeroconf
        self._spawn = spawn
        self._clock = clock
        self._book = MarkerBook(marker_key)
        self.known_last: frozenset[str] | None = None
        self.nearby: dict[str, PeerSighting] = {}
        self.lost: dict[str, PeerSighting] = {}
        self._names: dict[str, str] = {}
        self._resolving: set[str] = set()
        self._resolve_again: set[str] = set()

    def refresh_book(self) -> None:
        """Re-read the known devices; if the set changed, resolve the cached advertisements
        that now map to a known device. Whoever reads the change first (the liveness tick, a
        browser callback, a unicast probe) does it: a reader that only updated the book would
        leave the others nothing to notice, and a newly known device's cached advertisement
        would stay unresolved."""
        known = frozenset(self._known())
        self._book.update(known, self._clock())
        changed = known != self.known_last
        self.known_last = known
        if changed:
            self._rescan()

    def on_state(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        """The service browser's callback: an instance was added, updated or removed."""
        try:
            if state_change is ServiceStateChange.Removed:
                for table in (self.nearby, self.lost):
                    for device_id, peer in list(table.items()):
                        if peer.instance.lower() == name.lower():
                            self.gone(device_id, forget=True)
                return
            marker = marker_of(name)
            if marker is None:
                return
            self.refresh_book()
            if self._book.device_for_marker(marker) is not None:
                self.resolve_soon(name)
        except Exception:
            logger.exception("discovery browser callback failed")

    def resolve_soon(self, name: str) -> None:
        """Resolve instance ``name`` in a task (at most ``MAX_RESOLVING`` at once)."""
        if name in self._resolving:
            self._resolve_again.add(name)  # an update arrived while resolving: read again
            return
        if len(self._resolving) >= MAX_RESOLVING:
            logger.debug("too many pending resolves; dropped %s", name)
            return
        self._resolving.add(name)
        self._spawn(self._resolve(name))

    async def _resolve(self, name: str) -> None:
        try:
            azc = self._zeroconf()
            if azc is None:
                return
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if not await info.async_request(azc.zeroconf, RESOLVE_TIMEOUT_MS, question_type=QM):
                return
            addresses = tuple(sorted(info.parsed_addresses(IPVersion.V4Only)))
            props = dict(info.properties)
            self.sighted(name, props, addresses, info.port, info.server or "", "mdns")
        except Exception:
            logger.exception("resolving a peer failed")
        finally:
            self._resolving.discard(name)
            if name in self._resolve_again:
                self._resolve_again.discard(name)
                self.resolve_soon(name)

    def _rescan(self) -> None:
        """Resolve cached instances that newly map to a known device (the known set changed)."""
        azc = self._zeroconf()
        if azc is None:
            return
        for record in azc.zeroconf.cache.async_all_by_details(SERVICE_TYPE, TYPE_PTR, CLASS_IN):
            if isinstance(record, DNSPointer):
                marker = marker_of(record.alias)
                if marker is not None and self._book.device_for_marker(marker) is not None:
                    self.resolve_soon(record.alias)

    def sighted(
        self,
        name: str,
        props: dict[bytes, bytes | None],
        addresses: tuple[str, ...],
        port: int | None,
        host: str,
        via: Via,
    ) -> None:
        """An advertisement was read: record it if it is one of the account's other devices."""
        txt = decode_txt(props)
        if txt is None or marker_of(name) != txt.device:
            logger.debug("advertisement dropped (malformed TXT or name mismatch): %.80s", name)
            return
        self.refresh_book()
        if not self._book.is_ours(txt):
            return  # another account's device (or a stranger): not ours to list
        device_id = self._book.device_for(txt)
        if device_id is None or device_id == self.device_id or not port or not addresses:
            return
        self.record(device_id, addresses, port, name, host, via)

    def record(
        self, device_id: str, addresses: tuple[str, ...], port: int, name: str, host: str, via: Via
    ) -> None:
        """``device_id`` is nearby at ``addresses``/``port`` (an event if new or moved)."""
        peer = PeerSighting(
            device_id=device_id,
            addresses=addresses,
            port=port,
            last_seen=self._clock(),
            instance=name,
            host=host,
            via=via,
        )
        old = self.nearby.get(device_id)
        if old is not None and old.via == "mdns" and via == "unicast" and not name:
            # A unicast probe confirms an mDNS sighting; it does not replace it.
            self.nearby[device_id] = seen(old, peer.last_seen)
            self._live.heard(device_id, mono())
            return
        self.lost.pop(device_id, None)
        self.nearby[device_id] = peer
        self._live.heard(device_id, mono())
        self._index()
        if old is None or (old.addresses, old.port) != (addresses, port):
            self._emit(DiscoveryEvent("nearby", peer))

    def gone(self, device_id: str, *, forget: bool) -> None:
        """``device_id`` is gone: kept as lost (to notice it back) unless ``forget``."""
        peer = self.nearby.pop(device_id, None)
        if forget:
            self.lost.pop(device_id, None)
            self._live.forget(device_id)
        elif peer is not None:
            self.lost[device_id] = peer
        self._index()
        if peer is not None:
            self._emit(DiscoveryEvent("gone", peer))

    def forget_lost(self, device_id: str) -> None:
        """Stop re-checking a lost peer."""
        self.lost.pop(device_id, None)
        self._index()

    def device_for_name(self, name: str) -> str | None:
        """The peer whose instance or host name is ``name`` (nearby or lost)."""
        return self._names.get(name.lower())

    def _index(self) -> None:
        names: dict[str, str] = {}
        for table in (self.lost, self.nearby):
            for device_id, peer in table.items():
                for name in (peer.instance, peer.host):
                    if name:
                        names[name.lower()] = device_id
        self._names = names

    def _emit(self, event: DiscoveryEvent) -> None:
        try:
            self._on_change(event)
        except Exception:  # a listener's bug must not stop discovery
            logger.exception("discovery listener failed")
