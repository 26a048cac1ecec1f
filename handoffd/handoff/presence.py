"""Who is nearby and who is online: the only owner of discovery (mDNS advertise and browse,
with the LAN signaling listener) and of the server path (presence, signaling through the
server, relay offers), each supervised while the device is paired."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

from handoffd import identity
from handoffd.config import SettingsFile, parse_host_port
from handoffd.devicecache import store_device_list
from handoffd.devicestate import DeviceState
from handoffd.discovery.browse import DiscoveryEvent
from handoffd.errors import HandoffError, StoreError
from handoffd.events import EventBus, Subscription
from handoffd.handoff.local import LocalDevice
from handoffd.handoff.refusals import RefusalLog
from handoffd.handoff.timings import Clock, Timings
from handoffd.peering import ServerPath
from handoffd.serverlink import DeviceRecord, ServerClient
from handoffd.store import Store
from handoffd.transport.base import LocalIdentity
from handoffd.transport.relay import RelayChannel

logger = logging.getLogger("handoffd.handoff.presence")


class Board(Protocol):
    """Where presence is shown (the control API's status and device list read it)."""

    nearby: dict[str, tuple[str, ...]]
    server_online: frozenset[str] | None
    refusals: collections.deque[dict[str, Any]]


class Signaling(Protocol):
    """The LAN signaling listener (bound only while discovery runs)."""

    @property
    def port(self) -> int | None:
        """The bound port, None while not listening."""

    async def start(self) -> bool:
        """Listen; False if it could not."""

    async def close(self) -> None:
        """Stop listening (idempotent)."""


class Advertiser(Protocol):
    """mDNS advertise and browse (``discovery.mdns.Discovery``)."""

    async def start(self) -> None:
        """Start advertising and browsing."""

    async def close(self) -> None:
        """Stop (goodbye packets)."""


class MakeDiscovery(Protocol):
    """Builds an ``Advertiser`` (``discovery.mdns.Discovery``'s constructor)."""

    def __call__(
        self,
        *,
        device_id: str,
        port: int,
        marker_key: bytes,
        known_devices: Callable[[], Iterable[str]],
        on_change: Callable[[DiscoveryEvent], None],
        unicast_peers: Sequence[str] = (),
    ) -> Advertiser:
        """A discovery for this device."""


OnRequest = Callable[[bytes], Awaitable[bytes]]


class MakeServerPath(Protocol):
    """Builds a ``ServerPath`` (its constructor)."""

    def __call__(
        self,
        *,
        client: ServerClient,
        local: LocalIdentity,
        on_request: OnRequest,
        on_channel: Callable[[RelayChannel], Awaitable[None]],
        on_presence: Callable[[frozenset[str]], None],
        on_refused: Callable[[str], None] | None = None,
    ) -> ServerPath:
        """A server path for this device."""


async def next_event(sub: Subscription, within: float) -> dict[str, Any] | None:
    """The next event, ``{}`` after ``within`` seconds without one, None once the bus closed."""
    try:
        async with asyncio.timeout(within):
            event: dict[str, Any] | None = await sub.get()
    except TimeoutError:
        return {}
    return event


class Presence:
    """Sightings on the LAN and the server's presence; starts and stops what provides them."""

    def __init__(
        self,
        *,
        store: Store,
        device: DeviceState,
        settings: SettingsFile,
        events: EventBus,
        board: Board,
        local: LocalDevice,
        clock: Clock,
        timings: Timings,
        signaling: Signaling,
        make_discovery: MakeDiscovery,
        make_server_path: MakeServerPath,
        refusals: RefusalLog,
    ) -> None:
        self.store = store
        self.device = device
        self.settings = settings
        self.events = events
        self.board = board
        self.local = local
        self.clock = clock
        self.timings = timings
        self.signaling = signaling
        self._make_discovery = make_discovery
        self._make_server_path = make_server_path
        self.refusals = refusals
        self.discovery: Advertiser | None = None
        self._known: frozenset[str] | None = None
        self._trust: identity.TrustAnchor | None = None
        self.sightings: dict[str, tuple[tuple[str, ...], int]] = {}
        self.sighted = asyncio.Event()
        """Set when a device becomes nearby or online (waiters clear it first)."""
        self.came_online = asyncio.Event()
        """Set when a device comes online at the server (the notices wait on it)."""
        self.server: ServerPath | None = None
        self._server_local: LocalIdentity | None = None
        self.on_server_request: OnRequest | None = None
        self.on_relay_channel: Callable[[RelayChannel], Awaitable[None]] | None = None
        self.lane: Signaling | None = None
        """The LAN lane's listener, started and stopped with the signaling listener."""

    @property
    def signaling_port(self) -> int | None:
        """The LAN signaling port (None while not listening)."""
        return self.signaling.port

    # ------------------------------------------------------------ discovery

    async def discovery_loop(self) -> None:
        """Advertise and browse once paired (known devices read live; restarted on new trust)."""
        sub = self.events.subscribe()
        last_refresh: float | None = None
        try:
            while True:
                device = self.device
                paired = device.paired and device.trust is not None and not device.revoked
                if not (paired and self.settings.current.lan_discovery):
                    await self.stop_discovery()
                    await self.signaling.close()
                    if self.lane is not None:
                        await self.lane.close()
                elif await self.signaling.start():
                    if self.lane is not None:
                        await self.lane.start()
                    now = self.clock.mono()
                    if last_refresh is None or now - last_refresh > self.timings.device_refresh:
                        await self.refresh_devices()
                        last_refresh = self.clock.mono()
                    known = frozenset(
                        d.device_id
                        for d in await self.store.run(self.store.list_devices)
                        if not d.revoked and d.device_id != device.device_id
                    )
                    if known != self._known:
                        logger.info("known devices changed known=%d", len(known))
                    # Discovery reads the known set live; only new trust needs a restart.
                    self._known = known
                    if self.discovery is None or device.trust is not self._trust:
                        await self._start_discovery(known)
                event = await next_event(sub, 5.0)
                if event is None:
                    return
                kind = event.get("type")
                if kind in ("identity.paired", "identity.crl", "device.revoked"):
                    last_refresh = None
                elif kind == "device.online" and event.get("device_id") not in (self._known or ()):
                    last_refresh = None  # a device we have not heard of: newly paired
        finally:
            sub.close()

    async def refresh_devices(self) -> None:
        """Update the device cache from the server (best effort)."""
        try:
            async with asyncio.timeout(5.0):
                records = await self.device.devices()
        except (HandoffError, TimeoutError) as exc:
            logger.info("device list not refreshed: %s", getattr(exc, "code", "timeout"))
            return
        records = await self._push_name(records)
        try:
            await store_device_list(
                self.store,
                records,
                me=self.device.device_id,
                now=self.clock.wall(),
                publish=self.events.publish,
            )
        except StoreError as exc:  # a full disk: the cache stays as it was, discovery goes on
            logger.warning("device list not stored error=%s", exc.code)

    async def _push_name(self, records: list[DeviceRecord]) -> list[DeviceRecord]:
        """Rename this device at the server if the server still lists an older name."""
        name = self.settings.current.device_name
        me = self.device.device_id
        if all(r.name == name for r in records if r.device_id == me):
            return records
        try:
            async with asyncio.timeout(5.0):
                await self.device.rename(name)
        except (HandoffError, TimeoutError) as exc:
            logger.info("name not sent to the server: %s", getattr(exc, "code", "timeout"))
            return records
        return [dataclasses.replace(r, name=name) if r.device_id == me else r for r in records]

    async def _close_discovery(self) -> None:
        disc, self.discovery = self.discovery, None
        if disc is not None:
            try:
                await disc.close()  # goodbye packets: peers forget us at once
            except Exception as exc:  # noqa: BLE001 - zeroconf's own errors; cancellation passes
                logger.info("discovery did not close cleanly error=%s", exc)

    async def stop_discovery(self) -> None:
        """Stop discovery and forget every sighting."""
        had = self.discovery is not None
        await self._close_discovery()
        self._known = self._trust = None
        if had:
            for device_id in list(self.sightings):
                self.sightings.pop(device_id, None)
                self.board.nearby.pop(device_id, None)
                self.events.publish({"type": "device.gone", "device_id": device_id})
            logger.info("discovery stopped")

    async def _start_discovery(self, known: frozenset[str]) -> None:
        trust = self.device.trust
        port = self.signaling_port
        if trust is None or port is None:
            return
        await self._close_discovery()
        self._known, self._trust = known, trust
        key = trust.ca_cert.public_key()
        marker_key = identity.raw_public_key(key)  # type: ignore[arg-type]
        disc = self._make_discovery(
            device_id=self.device.device_id,
            port=port,
            marker_key=marker_key,
            known_devices=lambda: self._known or frozenset(),
            on_change=self.on_sighting,
            unicast_peers=self.settings.current.unicast_peers,
        )
        try:
            await disc.start()
        except (OSError, HandoffError) as exc:
            logger.warning("discovery did not start error=%s", exc)
            return
        self.discovery = disc
        logger.info("discovery started known=%d", len(known))

    def on_sighting(self, event: DiscoveryEvent) -> None:
        """A device became nearby, moved, or is gone."""
        peer = event.peer
        if event.kind == "nearby":
            self.sightings[peer.device_id] = (tuple(peer.addresses), int(peer.port))
            self.sighted.set()
            self.board.nearby[peer.device_id] = tuple(peer.addresses)
            self.events.publish(
                {
                    "type": "device.nearby",
                    "device_id": peer.device_id,
                    "addresses": list(peer.addresses),
                }
            )
        else:
            self.sightings.pop(peer.device_id, None)
            self.board.nearby.pop(peer.device_id, None)
            self.events.publish({"type": "device.gone", "device_id": peer.device_id})

    def addresses(self, device_id: str) -> list[tuple[str, int]]:
        """Where to reach a device's signaling port: its sighting, then ``unicast_peers``."""
        out: list[tuple[str, int]] = []
        seen = self.sightings.get(device_id)
        if seen is not None:
            out.extend((a, seen[1]) for a in seen[0])
        for text in self.settings.current.unicast_peers:
            with contextlib.suppress(HandoffError):
                host, port = parse_host_port(text)
                if port != 5353 and (host, port) not in out:
                    out.append((host, port))
        return out

    # ------------------------------------------------------------ the server path

    async def server_loop(self) -> None:
        """Keep a server link (presence, signaling through the server, relay) while paired."""
        sub = self.events.subscribe()
        try:
            while True:
                device = self.device
                if not device.paired or device.revoked or device.trust is None:
                    await self.stop_server_path()
                else:
                    try:
                        local: LocalIdentity | None = self.local.identity()
                    except HandoffError:
                        local = None
                    if local is not None and local is not self._server_local:
                        await self.stop_server_path()
                        await self._start_server_path(local)
                if await next_event(sub, 5.0) is None:
                    return
        finally:
            sub.close()

    async def _start_server_path(self, local: LocalIdentity) -> None:
        if self.on_server_request is None or self.on_relay_channel is None:
            raise HandoffError("presence is not wired", code="internal")
        try:
            path = self._make_server_path(
                client=self.device.client(),
                local=local,
                on_request=self.on_server_request,
                on_channel=self.on_relay_channel,
                on_presence=self.on_presence,
                on_refused=self._server_refused,
            )
        except HandoffError as exc:
            logger.info("no server link code=%s", exc.code)
            return
        self.server, self._server_local = path, local
        await path.start()
        logger.info("server link started")

    def _server_refused(self, code: str) -> None:
        if code == "device-revoked":
            self.device.note_revoked()  # the server says this device itself is revoked
            return
        self.refusals.add(code, "relay")

    async def stop_server_path(self) -> None:
        """Close the server link (if any); nobody is online any more."""
        path, self.server, self._server_local = self.server, None, None
        if path is not None:
            self.on_presence(frozenset(), connected=False)
            await path.close()

    def on_presence(self, online: frozenset[str], *, connected: bool = True) -> None:
        """The server's list of the account's online devices changed."""
        me = self.device.device_id
        before = self.board.server_online or frozenset()
        live = self.server is not None and self.server.connected and connected
        now = online - {me} if live else frozenset()
        self.board.server_online = now if live else None
        for device_id in sorted(now - before):
            self.events.publish({"type": "device.online", "device_id": device_id})
        for device_id in sorted(before - now):
            self.events.publish({"type": "device.offline", "device_id": device_id})
        if now - before:
            self.sighted.set()
            self.came_online.set()

    async def close(self) -> None:
        """Stop discovery, the listener and the server link (idempotent)."""
        await self._close_discovery()
        await self.signaling.close()
        if self.lane is not None:
            await self.lane.close()
        # Last: while the engine is being cancelled, closing the server link re-raises that.
        await self.stop_server_path()
