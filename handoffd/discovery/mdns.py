"""LAN discovery over mDNS (python-zeroconf, imported only in this package): the ``Discovery`` service.

Advertises ``<device marker>._handoff._tcp.local.`` (host ``<device
marker>.local.``) with the signaling port, and browses for the account's other
devices. What the records reveal, and why, is in ``txt.py`` and
docs/discovery.md.

- Startup does not wait for mDNS probing: the instance name is a per-device
  marker, unique by construction, so registration skips the conflict probe
  (``cooperating_responders=True``) and the first announcement leaves at once.
- Only instance names whose marker maps to a known device are resolved, so
  strangers' advertisements cost a dictionary lookup, not a query.
- Liveness is our own (caches keep a dead peer for minutes): every record
  heard from a peer counts; a peer silent for a while is asked for its SRV
  record (and, if the caller gave one, probed by a callback); repeated
  failures make it gone; a lost peer that answers later is nearby again.
- The markers rotate at the UTC day change: the new name is registered before
  the old one says goodbye, so peers see no gap.
- Interface changes: addresses are re-read every few seconds; on a change the
  record set is re-announced and zeroconf rebinds its sockets.
- Networks that block multicast: ``unicast_peers`` entries on port 5353 are
  asked with legacy unicast DNS-SD queries; other entries go to the caller's
  ``unicast_probe`` (e.g. its authenticated signaling hello).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any

from zeroconf.asyncio import AsyncZeroconf

from handoffd.discovery.advertise import Advertiser
from handoffd.discovery.alive import PROBE_TIMEOUT, Heard, LivenessChecker
from handoffd.discovery.browse import DiscoveryEvent, PeerBrowser, PeerSighting
from handoffd.discovery.dns import MDNS_PORT
from handoffd.discovery.liveness import Liveness, LivenessPolicy
from handoffd.discovery.unicast import parse_unicast_peer, unicast_query
from handoffd.tasks import TaskSet

logger = logging.getLogger("handoffd.discovery")

INTERFACE_POLL = 5.0
UNICAST_INTERVAL = 5.0


class Discovery:
    """Advertise ourselves and track the account's devices on the LAN."""

    def __init__(
        self,
        *,
        device_id: str,
        port: int,
        marker_key: bytes,
        known_devices: Callable[[], Iterable[str]],
        on_change: Callable[[DiscoveryEvent], None],
        interfaces: Sequence[str] | None = None,
        unicast_peers: Sequence[str] = (),
        probe: Callable[[PeerSighting], Awaitable[bool]] | None = None,
        unicast_probe: Callable[[str, int], Awaitable[str | None]] | None = None,
        liveness: LivenessPolicy | None = None,
        interface_poll: float = INTERFACE_POLL,
        unicast_interval: float = UNICAST_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``known_devices`` is read live (a change is picked up within a second).

        ``interfaces``: IPv4 addresses to use (None: all, followed as they change).
        ``probe``: an extra liveness check (e.g. ``tcp_probe``); a peer is alive if
        it answers mDNS or the probe succeeds. ``unicast_probe(host, port)``
        returns the authenticated device id reached there, or None.
        """
        if not 0 < port < 65536:
            raise ValueError("port out of range")
        self.device_id = device_id
        self._unicast: list[tuple[str, int]] = []
        for text in unicast_peers:
            parsed = parse_unicast_peer(text)
            if parsed is None:
                logger.warning("unicast peer ignored (not HOST[:PORT]): %.80r", text)
            else:
                self._unicast.append(parsed)
        self._unicast_probe = unicast_probe
        self._interface_poll = interface_poll
        self._unicast_interval = unicast_interval
        self._tasks = TaskSet("discovery")
        self._announces: set[asyncio.Future[Any]] = set()  # zeroconf's, owned by us
        self._loops: list[asyncio.Task[None]] = []
        self._started = False
        self._closed = False
        live = Liveness(liveness)
        self.browser = PeerBrowser(
            device_id=device_id,
            marker_key=marker_key,
            known_devices=known_devices,
            on_change=on_change,
            live=live,
            zeroconf=self._zeroconf,
            spawn=self._spawn,
            clock=clock,
        )
        self._alive = LivenessChecker(
            browser=self.browser,
            live=live,
            zeroconf=self._zeroconf,
            spawn=self._spawn,
            clock=clock,
            probe=probe,
            unicast_probe=unicast_probe,
        )
        self._advertiser = Advertiser(
            device_id=device_id,
            port=port,
            marker_key=marker_key,
            interfaces=interfaces,
            interface_poll=interface_poll,
            on_state=self.browser.on_state,
            listener=Heard(self._alive.on_record),
            spawn=self._spawn,
            own=self._own,
            closed=lambda: self._closed,
            clock=clock,
        )
        self.registered = self._advertiser.registered

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start advertising and browsing; returns without waiting for announcements."""
        if self._started or self._closed:
            raise RuntimeError("Discovery.start() called twice or after close()")
        self._started = True
        await self._advertiser.start()
        self._loops.append(asyncio.create_task(self._alive.run(), name="mdns-liveness"))
        self._loops.append(asyncio.create_task(self._maintenance_loop(), name="mdns-maintenance"))
        if self._unicast:
            self._loops.append(asyncio.create_task(self._unicast_loop(), name="mdns-unicast"))

    async def close(self) -> None:
        """Send goodbye, stop browsing, cancel every task (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await self._tasks.close()
        tasks = [*self._loops, *self._announces]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await self._advertiser.stop()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` as a task owned by this object (cancelled by ``close``)."""
        if self._closed or self._tasks.closed:
            coro.close()
            return
        self._tasks.spawn(coro, "discovery")

    def _own(self, announce: Awaitable[Any]) -> Awaitable[Any]:
        """Zeroconf's announcement task, cancelled by ``close`` even if its awaiter never ran."""
        task = asyncio.ensure_future(announce)
        self._announces.add(task)
        task.add_done_callback(self._announces.discard)
        return task

    def _zeroconf(self) -> AsyncZeroconf | None:
        """The running responder, for the browser and the liveness checks."""
        return self._advertiser.zeroconf

    # ------------------------------------------------------------ advertisement

    @property
    def port(self) -> int:
        """The signaling port we advertise."""
        return self._advertiser.port

    @property
    def instance(self) -> str:
        """Our current mDNS instance name (changes every UTC day)."""
        return self._advertiser.instance

    async def update_port(self, port: int) -> None:
        """Advertise a new signaling port (peers see a "nearby" with the new port)."""
        await self._advertiser.update_port(port)

    async def refresh(self) -> None:
        """Follow address changes and the day's marker rotation (the maintenance loop calls this)."""
        await self._advertiser.refresh()

    # ------------------------------------------------------------ maintenance

    async def _maintenance_loop(self) -> None:
        while True:
            await asyncio.sleep(self._interface_poll)
            try:
                await self.refresh()
            except Exception:
                logger.exception("discovery refresh failed")

    async def _unicast_loop(self) -> None:
        while True:
            for host, port in self._unicast:
                try:
                    await self._unicast_once(host, port)
                except Exception:
                    logger.exception("unicast discovery failed for %s", host)
            await asyncio.sleep(self._unicast_interval)

    async def _unicast_once(self, host: str, port: int) -> None:
        if port == MDNS_PORT:
            for name, props, addresses, srv_port, server in await unicast_query(host, port):
                self.browser.sighted(name, props, addresses, srv_port, server, "unicast")
            return
        if self._unicast_probe is None:
            return
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                device_id = await self._unicast_probe(host, port)
        except (OSError, TimeoutError):
            return
        self.browser.refresh_book()
        if device_id is None or device_id == self.device_id:
            return
        if device_id not in (self.browser.known_last or frozenset()):
            return
        self.browser.record(device_id, (host,), port, "", "", "unicast")

    # ------------------------------------------------------------ queries

    def peers(self) -> list[PeerSighting]:
        """Devices of our account currently nearby."""
        return sorted(self.browser.nearby.values(), key=lambda p: p.device_id)

    def lookup(self, device_id: str) -> PeerSighting | None:
        """Where ``device_id`` was seen, if it is nearby."""
        return self.browser.nearby.get(device_id)
