"""LAN discovery over mDNS (python-zeroconf; the only module importing it).

Advertises ``<device marker>._handoff._tcp.local.`` with the signaling port and
browses for the account's other devices. Startup does not wait for mDNS
probing: the instance name is a per-device marker, unique by construction, so
registration skips the conflict probe (``cooperating_responders``) and the
first announcement leaves at once. A peer that dies without a goodbye stays
in caches for minutes, so liveness is our own: peers not heard from recently
are probed (by default a TCP connect to their signaling port) and reported
gone after two failures. Networks that block multicast can list unicast hosts
(``unicast_peers``): they are browsed with unicast queries to their port 5353.
Interface changes are followed by re-reading addresses every few seconds and
restarting the responder when they change.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import ifaddr
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf._dns import DNSAddress, DNSPointer, DNSQuestion, DNSService, DNSText
from zeroconf._protocol.incoming import DNSIncoming
from zeroconf._protocol.outgoing import DNSOutgoing
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf
from zeroconf.const import _CLASS_IN, _FLAGS_QR_QUERY, _TYPE_PTR

from handoffd.discovery.txt import (
    SERVICE_TYPE,
    VERSION,
    MarkerBook,
    Txt,
    account_marker,
    day_of,
    decode_txt,
    device_marker,
)

logger = logging.getLogger("handoffd.discovery")

RESOLVE_TIMEOUT_MS = 3000
LIVENESS_INTERVAL = 10.0
MISSES_FOR_GONE = 2
PROBE_TIMEOUT = 2.0
INTERFACE_POLL = 10.0
UNICAST_INTERVAL = 5.0
UNICAST_WAIT = 1.0


@dataclass(frozen=True, slots=True)
class PeerSighting:
    """A device of our account seen on the LAN."""

    device_id: str
    addresses: tuple[str, ...]
    port: int
    last_seen: float
    instance: str


@dataclass(frozen=True, slots=True)
class DiscoveryEvent:
    """A peer became nearby (or changed), or is gone."""

    kind: Literal["nearby", "gone"]
    peer: PeerSighting


async def tcp_probe(peer: PeerSighting) -> bool:
    """Default liveness check: can we open a TCP connection to the signaling port?"""
    for address in peer.addresses:
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(address, peer.port), PROBE_TIMEOUT
            )
        except (OSError, TimeoutError):
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
    return False


class _Collector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if len(self.packets) < 32:
            self.packets.append(data)


def _txt_props(raw: bytes) -> dict[bytes, bytes | None]:
    props: dict[bytes, bytes | None] = {}
    i = 0
    while i < len(raw):
        n = raw[i]
        entry = raw[i + 1 : i + 1 + n]
        i += 1 + n
        key, eq, value = entry.partition(b"=")
        props[key] = value if eq else None
    return props


async def unicast_query(
    address: str, port: int = 5353
) -> list[tuple[str, dict[bytes, bytes | None], tuple[str, ...], int]]:
    """Ask one host for our service type with a legacy unicast query (answered to our port).

    Where multicast is blocked, the answer to a query from port 5353 may go out
    by multicast; one from another port is answered by unicast.
    """
    loop = asyncio.get_running_loop()
    try:
        transport, proto = await loop.create_datagram_endpoint(
            _Collector, remote_addr=(address, port)
        )
    except OSError:
        return []
    try:
        out = DNSOutgoing(_FLAGS_QR_QUERY, multicast=False)
        out.add_question(DNSQuestion(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN))
        for packet in out.packets():
            transport.sendto(packet)
        await asyncio.sleep(UNICAST_WAIT)
    finally:
        transport.close()
    found = []
    for data in proto.packets:
        records = DNSIncoming(data).answers()
        names = {r.alias for r in records if isinstance(r, DNSPointer) and r.name == SERVICE_TYPE}
        for name in names:
            srv = next((r for r in records if isinstance(r, DNSService) and r.name == name), None)
            text = next((r for r in records if isinstance(r, DNSText) and r.name == name), None)
            if srv is None or text is None:
                continue
            addresses = tuple(
                sorted(
                    str(ipaddress.IPv4Address(r.address))
                    for r in records
                    if isinstance(r, DNSAddress) and r.name == srv.server and len(r.address) == 4
                )
            )
            found.append((name, _txt_props(text.text), addresses, srv.port))
    return found


def local_addresses() -> frozenset[str]:
    """This host's IPv4 addresses other than loopback and link-local."""
    found = set()
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                addr = ipaddress.IPv4Address(ip.ip)
                if not (addr.is_loopback or addr.is_link_local):
                    found.add(str(addr))
    return frozenset(found)


class Discovery:
    """Advertise ourselves and track the account's devices on the LAN."""

    def __init__(
        self,
        *,
        device_id: str,
        port: int,
        marker_key: bytes,
        known_devices: Callable[[], frozenset[str]],
        on_change: Callable[[DiscoveryEvent], None],
        interfaces: Sequence[str] | None = None,
        unicast_peers: Sequence[str] = (),
        probe: Callable[[PeerSighting], Awaitable[bool]] = tcp_probe,
        liveness_interval: float = LIVENESS_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.device_id = device_id
        self.port = port
        self._key = marker_key
        self._known = known_devices
        self._on_change = on_change
        self._interfaces = list(interfaces) if interfaces else None
        self._unicast = list(unicast_peers)
        self._probe = probe
        self._liveness_interval = liveness_interval
        self._clock = clock
        self._book = MarkerBook(marker_key)
        self._peers: dict[str, PeerSighting] = {}
        self._misses: dict[str, int] = {}
        self._zc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None
        self._browsers: list[AsyncServiceBrowser] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._addresses: frozenset[str] = frozenset()
        self._closed = False
        self.registered = asyncio.Event()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start advertising and browsing; returns without waiting for announcements."""
        await self._start_zeroconf()
        self._loops.append(asyncio.create_task(self._liveness_loop(), name="mdns-liveness"))
        if self._unicast:
            self._loops.append(asyncio.create_task(self._unicast_loop(), name="mdns-unicast"))
        if self._interfaces is None:
            self._loops.append(asyncio.create_task(self._interface_loop(), name="mdns-ifaces"))

    async def _start_zeroconf(self) -> None:
        self._addresses = (
            local_addresses() if self._interfaces is None else frozenset(self._interfaces)
        )
        kwargs: dict[str, Any] = {"ip_version": IPVersion.V4Only}
        if self._interfaces is not None:
            kwargs["interfaces"] = self._interfaces
        self._zc = AsyncZeroconf(**kwargs)
        self._info = self._service_info()
        # A per-device marker cannot collide, so no probe: startup does not wait ~1.7 s.
        announce = await self._zc.async_register_service(self._info, cooperating_responders=True)
        self._track(self._await_announce(announce))
        zc = self._zc.zeroconf
        self._browsers = [AsyncServiceBrowser(zc, SERVICE_TYPE, handlers=[self._on_state])]

    async def _await_announce(self, announce: Awaitable[Any]) -> None:
        await announce
        self.registered.set()

    async def _stop_zeroconf(self) -> None:
        browsers, self._browsers = self._browsers, []
        for browser in browsers:
            await browser.async_cancel()
        zc, self._zc = self._zc, None
        if zc is None:
            return
        if self._info is not None:
            # The returned task must itself be awaited or the goodbye is never sent.
            goodbye = await zc.async_unregister_service(self._info)
            await goodbye
        await zc.async_close()

    async def close(self) -> None:
        """Send goodbye, stop browsing, cancel every task (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for task in [*self._loops, *self._tasks]:
            task.cancel()
        for task in [*self._loops, *self._tasks]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._stop_zeroconf()

    def _track(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ advertisement

    def _service_info(self) -> AsyncServiceInfo:
        day = day_of(self._clock())
        instance = device_marker(self._key, self.device_id, day)
        txt = Txt(version=VERSION, device=instance, account=account_marker(self._key, day))
        return AsyncServiceInfo(
            SERVICE_TYPE,
            f"{instance}.{SERVICE_TYPE}",
            port=self.port,
            properties=txt.encode(),
            server=f"{instance}.local.",
            parsed_addresses=sorted(self._addresses) or None,
        )

    # ------------------------------------------------------------ browsing

    def _on_state(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            for device_id, peer in list(self._peers.items()):
                if peer.instance == name:
                    self._gone(device_id)
            return
        self._track(self._resolve(zeroconf, name))

    async def _resolve(self, zeroconf: Zeroconf, name: str) -> None:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(zeroconf, RESOLVE_TIMEOUT_MS):
            return
        addresses = tuple(sorted(info.parsed_addresses(IPVersion.V4Only)))
        self._sighted(name, dict(info.properties), addresses, info.port)

    def _sighted(
        self,
        name: str,
        props: dict[bytes, bytes | None],
        addresses: tuple[str, ...],
        port: int | None,
    ) -> None:
        txt = decode_txt(props)
        if txt is None:
            return
        now = self._clock()
        self._book.update(self._known(), now)
        if not self._book.is_ours(txt):
            return  # another account's device (or a stranger): not ours to list
        device_id = self._book.device_for(txt)
        if device_id is None or device_id == self.device_id or not port or not addresses:
            return
        peer = PeerSighting(
            device_id=device_id, addresses=addresses, port=port, last_seen=now, instance=name
        )
        old = self._peers.get(device_id)
        self._peers[device_id] = peer
        self._misses.pop(device_id, None)
        if old is None or (old.addresses, old.port) != (addresses, peer.port):
            self._emit(DiscoveryEvent("nearby", peer))

    def _gone(self, device_id: str) -> None:
        peer = self._peers.pop(device_id, None)
        self._misses.pop(device_id, None)
        if peer is not None:
            self._emit(DiscoveryEvent("gone", peer))

    def _emit(self, event: DiscoveryEvent) -> None:
        try:
            self._on_change(event)
        except Exception:  # a listener's bug must not stop discovery
            logger.exception("discovery listener failed")

    # ------------------------------------------------------------ liveness

    async def _unicast_loop(self) -> None:
        while True:
            for host in self._unicast:
                address, _, port = host.partition(":")
                for name, props, addresses, srv_port in await unicast_query(
                    address, int(port) if port else 5353
                ):
                    self._sighted(name, props, addresses, srv_port)
            await asyncio.sleep(UNICAST_INTERVAL)

    async def _liveness_loop(self) -> None:
        while True:
            await asyncio.sleep(self._liveness_interval)
            await self.check_liveness()

    async def check_liveness(self) -> None:
        """Probe peers not heard from lately; two failed probes make a peer gone."""
        now = self._clock()
        for device_id, peer in list(self._peers.items()):
            if now - peer.last_seen < self._liveness_interval:
                continue
            if await self._probe(peer):
                self._misses.pop(device_id, None)
                if device_id in self._peers:
                    self._peers[device_id] = replace(peer, last_seen=self._clock())
                continue
            self._misses[device_id] = self._misses.get(device_id, 0) + 1
            if self._misses[device_id] >= MISSES_FOR_GONE:
                logger.info("peer gone (liveness)", extra={"device": device_id})
                self._gone(device_id)

    async def _interface_loop(self) -> None:
        while True:
            await asyncio.sleep(INTERFACE_POLL)
            current = local_addresses()
            if current != self._addresses:
                logger.info(
                    "interfaces changed; restarting mDNS", extra={"addresses": sorted(current)}
                )
                await self._stop_zeroconf()
                await self._start_zeroconf()

    # ------------------------------------------------------------ queries

    def peers(self) -> list[PeerSighting]:
        """Devices of our account currently nearby."""
        return sorted(self._peers.values(), key=lambda p: p.device_id)

    def lookup(self, device_id: str) -> PeerSighting | None:
        """Where ``device_id`` was seen, if it is nearby."""
        return self._peers.get(device_id)
