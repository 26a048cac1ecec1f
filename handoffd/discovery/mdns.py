"""LAN discovery over mDNS (python-zeroconf; the only module importing it).

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
import contextlib
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import ifaddr
from zeroconf import (
    DNSQuestionType,
    IPVersion,
    RecordUpdate,
    RecordUpdateListener,
    ServiceStateChange,
    Zeroconf,
)

# Not re-exported by zeroconf's __all__, but stable for years; used for the
# liveness query and the legacy unicast query only.
from zeroconf._dns import DNSAddress, DNSPointer, DNSQuestion, DNSService, DNSText
from zeroconf._protocol.incoming import DNSIncoming
from zeroconf._protocol.outgoing import DNSOutgoing
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from handoffd.discovery.liveness import Liveness, LivenessPolicy
from handoffd.discovery.txt import (
    SERVICE_TYPE,
    VERSION,
    MarkerBook,
    Txt,
    account_marker,
    day_of,
    decode_txt,
    device_marker,
    host_name,
    instance_name,
    marker_of,
    parse_txt_record,
)

logger = logging.getLogger("handoffd.discovery")

MDNS_PORT = 5353
_TYPE_PTR, _TYPE_SRV, _CLASS_IN, _FLAGS_QUERY = 12, 33, 1, 0

RESOLVE_TIMEOUT_MS = 3000
MAX_RESOLVING = 32
START_TIMEOUT = 10.0
GOODBYE_TIMEOUT = 3.0
CLOSE_TIMEOUT = 5.0
PROBE_TIMEOUT = 2.0
INTERFACE_POLL = 5.0
UNICAST_INTERVAL = 5.0
UNICAST_WAIT = 1.0
MAX_UNICAST_PACKETS = 16
TICK = 0.5

QM = DNSQuestionType.QM

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


async def tcp_probe(peer: PeerSighting) -> bool:
    """A liveness probe callback: can we open a TCP connection to the signaling port?"""
    for address in peer.addresses:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                _, writer = await asyncio.open_connection(address, peer.port)
        except (OSError, TimeoutError):
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
    return False


def all_ipv4_addresses() -> frozenset[str]:
    """Every IPv4 address of this host, loopback included."""
    return frozenset(
        ip.ip for adapter in ifaddr.get_adapters() for ip in adapter.ips if isinstance(ip.ip, str)
    )


def local_addresses() -> frozenset[str]:
    """This host's IPv4 addresses other than loopback and link-local (what we advertise)."""
    found = set()
    for text in all_ipv4_addresses():
        addr = ipaddress.IPv4Address(text)
        if not (addr.is_loopback or addr.is_link_local):
            found.add(text)
    return frozenset(found)


def parse_unicast_peer(text: str) -> tuple[str, int] | None:
    """``HOST`` or ``HOST:PORT`` (IPv6 in brackets) → (host, port); None if malformed."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ("" if not rest else "x")
        if not sep:
            return None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host or len(host) > 253 or any(c.isspace() or ord(c) < 32 for c in host):
        return None
    if not port_text:
        return host, MDNS_PORT
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        return None
    return host, int(port_text)


class _Collector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.packets: list[bytes] = []
        self.arrived = asyncio.Event()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if len(self.packets) < MAX_UNICAST_PACKETS:
            self.packets.append(data)
            self.arrived.set()


Found = tuple[str, dict[bytes, bytes | None], tuple[str, ...], int, str]


def _parse_answers(data: bytes) -> list[Found]:
    """Our service's instances in one DNS response (name, TXT props, IPv4s, port, host)."""
    records = DNSIncoming(data).answers()
    found = []
    names = {r.alias for r in records if isinstance(r, DNSPointer) and r.name == SERVICE_TYPE}
    for name in sorted(names)[:MAX_UNICAST_PACKETS]:
        srv = next((r for r in records if isinstance(r, DNSService) and r.name == name), None)
        text = next((r for r in records if isinstance(r, DNSText) and r.name == name), None)
        if srv is None or text is None:
            continue
        props = parse_txt_record(text.text)
        if props is None:
            continue
        addresses = tuple(
            sorted(
                str(ipaddress.IPv4Address(r.address))
                for r in records
                if isinstance(r, DNSAddress) and r.name == srv.server and len(r.address) == 4
            )
        )
        found.append((name, props, addresses, srv.port, srv.server))
    return found


async def unicast_query(address: str, port: int = MDNS_PORT) -> list[Found]:
    """Ask one host for our service type with a legacy unicast query (answered to our port).

    Where multicast is blocked, the answer to a query from port 5353 would go
    out by multicast; one from another port is answered by unicast (RFC 6762
    §6.7). Only one responder per host receives a unicast packet to 5353.
    """
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(UNICAST_WAIT):
            transport, proto = await loop.create_datagram_endpoint(
                _Collector, remote_addr=(address, port)
            )
    except (OSError, TimeoutError):
        return []
    try:
        out = DNSOutgoing(_FLAGS_QUERY, multicast=False)
        out.add_question(DNSQuestion(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN))
        for packet in out.packets():
            transport.sendto(packet)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(UNICAST_WAIT):
                await proto.arrived.wait()
                await asyncio.sleep(0.05)  # answers may span a few packets
    finally:
        transport.close()
    found: list[Found] = []
    for data in proto.packets:
        try:
            found.extend(_parse_answers(data))
        except Exception:  # noqa: BLE001 - hostile bytes: drop the packet, never the loop
            logger.debug("unparsable unicast mDNS answer from %s", address)
    return found


class _Heard(RecordUpdateListener):
    """Tells the owner about every fresh record zeroconf receives (before caching)."""

    def __init__(self, on_record: Callable[[str], None]) -> None:
        super().__init__()
        self._on_record = on_record

    def async_update_records(self, zc: Zeroconf, now: float, records: list[RecordUpdate]) -> None:
        try:
            for update in records:
                record = update.new
                if not record.is_expired(now):
                    self._on_record(record.name)
        except Exception:
            logger.exception("discovery record listener failed")

    def async_update_records_complete(self) -> None:
        return None


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
        self.port = port
        self._key = marker_key
        self._known = known_devices
        self._on_change = on_change
        self._interfaces = list(interfaces) if interfaces else None
        self._unicast: list[tuple[str, int]] = []
        for text in unicast_peers:
            parsed = parse_unicast_peer(text)
            if parsed is None:
                logger.warning("unicast peer ignored (not HOST[:PORT]): %.80r", text)
            else:
                self._unicast.append(parsed)
        self._probe = probe
        self._unicast_probe = unicast_probe
        self._interface_poll = interface_poll
        self._unicast_interval = unicast_interval
        self._clock = clock
        self._book = MarkerBook(marker_key)
        self._known_last: frozenset[str] | None = None
        self._live = Liveness(liveness)
        self._peers: dict[str, PeerSighting] = {}
        self._lost: dict[str, PeerSighting] = {}
        self._names: dict[str, str] = {}
        self._waiters: dict[str, asyncio.Event] = {}
        self._resolving: set[str] = set()
        self._resolve_again: set[str] = set()
        self._zc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None
        self._registered: AsyncServiceInfo | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._listener = _Heard(self._on_record)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()
        self._addresses: frozenset[str] = frozenset()
        self._day = -1
        self._started = False
        self._closed = False
        self.registered = asyncio.Event()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start advertising and browsing; returns without waiting for announcements."""
        if self._started or self._closed:
            raise RuntimeError("Discovery.start() called twice or after close()")
        self._started = True
        await self._try_start_zeroconf()
        self._loops.append(asyncio.create_task(self._liveness_loop(), name="mdns-liveness"))
        self._loops.append(asyncio.create_task(self._maintenance_loop(), name="mdns-maintenance"))
        if self._unicast:
            self._loops.append(asyncio.create_task(self._unicast_loop(), name="mdns-unicast"))

    async def close(self) -> None:
        """Send goodbye, stop browsing, cancel every task (idempotent)."""
        if self._closed:
            return
        self._closed = True
        tasks = [*self._loops, *self._tasks]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await self._stop_zeroconf()

    async def _try_start_zeroconf(self) -> None:
        """Start the responder; on failure (no usable interface yet) clean up and log.

        The maintenance loop retries, so a device that boots without a network
        starts advertising once one appears.
        """
        try:
            await self._start_zeroconf()
        except asyncio.CancelledError:
            await self._stop_zeroconf()
            raise
        except Exception:
            logger.warning(
                "mDNS not started (retrying every %g s)", self._interface_poll, exc_info=True
            )
            await self._stop_zeroconf()

    async def _start_zeroconf(self) -> None:
        kwargs: dict[str, Any] = {"ip_version": IPVersion.V4Only}
        # zeroconf leaks its listen socket when its constructor fails on a missing
        # interface, so refuse those cases before constructing it.
        present = all_ipv4_addresses()
        if self._interfaces is None:
            if not present:
                raise OSError("no IPv4 interface")
            self._addresses = local_addresses()
        else:
            missing = [a for a in self._interfaces if a not in present]
            if missing:
                raise OSError(f"interfaces not on this host: {', '.join(missing)}")
            kwargs["interfaces"] = self._interfaces
            self._addresses = frozenset(a for a in self._interfaces if _is_ipv4(a))
        azc = AsyncZeroconf(**kwargs)
        self._zc = azc
        azc.zeroconf.async_add_listener(self._listener, None)
        day = day_of(self._clock())
        info = self._service_info(day)
        # A per-device marker cannot collide, so no probe: startup does not wait ~1.7 s.
        async with asyncio.timeout(START_TIMEOUT):
            announce = await azc.async_register_service(info, cooperating_responders=True)
        self._info = self._registered = info
        self._day = day
        self._spawn(self._announced(self._own(announce)))
        # QM, not zeroconf's default QU first query: a unicast answer to port 5353 reaches
        # only one of the sockets bound there (another daemon, avahi), costing ~1 s.
        self._browser = AsyncServiceBrowser(
            azc.zeroconf, SERVICE_TYPE, handlers=[self._on_state], question_type=QM
        )

    async def _announced(self, announce: Awaitable[Any]) -> None:
        await announce
        self.registered.set()

    async def _stop_zeroconf(self) -> None:
        azc, self._zc = self._zc, None
        if azc is None:
            return
        browser, self._browser = self._browser, None
        registered, self._registered = self._registered, None
        try:
            if browser is not None:
                await browser.async_cancel()
            if registered is not None:
                # The returned task must itself be awaited or the goodbye is never sent.
                goodbye = await azc.async_unregister_service(registered)
                async with asyncio.timeout(GOODBYE_TIMEOUT):
                    await goodbye
        except Exception:
            logger.warning("mDNS goodbye not sent", exc_info=True)
        finally:
            with contextlib.suppress(ValueError, KeyError):
                azc.zeroconf.async_remove_listener(self._listener)
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await azc.async_close()
            except Exception:
                logger.warning("mDNS responder did not close cleanly", exc_info=True)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` as a task owned by this object (cancelled by ``close``)."""
        if self._closed:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _own(self, announce: Awaitable[Any]) -> Awaitable[Any]:
        """Zeroconf's announcement task, cancelled by ``close`` even if its awaiter never ran."""
        task = asyncio.ensure_future(announce)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("discovery task failed", exc_info=task.exception())

    # ------------------------------------------------------------ advertisement

    def _service_info(self, day: int) -> AsyncServiceInfo:
        marker = device_marker(self._key, self.device_id, day)
        txt = Txt(version=VERSION, device=marker, account=account_marker(self._key, day))
        return AsyncServiceInfo(
            SERVICE_TYPE,
            instance_name(marker),
            port=self.port,
            properties=txt.encode(),
            server=host_name(marker),
            parsed_addresses=sorted(self._addresses),
        )

    @property
    def instance(self) -> str:
        """Our current mDNS instance name (changes every UTC day)."""
        return self._info.name if self._info is not None else ""

    async def update_port(self, port: int) -> None:
        """Advertise a new signaling port (peers see a "nearby" with the new port)."""
        if not 0 < port < 65536:
            raise ValueError("port out of range")
        async with self._lock:
            self.port = port
            await self._reannounce()

    async def refresh(self) -> None:
        """Follow address changes and the day's marker rotation (the maintenance loop calls this)."""
        async with self._lock:
            if self._closed:
                return
            azc = self._zc
            if azc is None:
                await self._try_start_zeroconf()
                return
            changed = False
            if self._interfaces is None:
                current = local_addresses()
                if current != self._addresses:
                    logger.info("addresses changed: %s", ",".join(sorted(current)) or "none")
                    self._addresses, changed = current, True
            day = day_of(self._clock())
            if day != self._day:
                await self._rotate(day)
            elif changed:
                await self._reannounce()
            if changed:
                try:
                    async with asyncio.timeout(START_TIMEOUT):
                        await azc.async_update_interfaces()
                except Exception:
                    logger.warning("zeroconf interface update failed; restarting", exc_info=True)
                    await self._restart()

    async def _reannounce(self) -> None:
        azc = self._zc
        if azc is None or self._registered is None:
            return
        info = self._service_info(self._day)
        announce = await azc.async_update_service(info)
        self._info = self._registered = info
        self._spawn(_quietly(self._own(announce)))

    async def _rotate(self, day: int) -> None:
        """Register the new day's name, then say goodbye for the old one (no gap for peers)."""
        azc, old = self._zc, self._registered
        if azc is None:
            return
        info = self._service_info(day)
        announce = await azc.async_register_service(info, cooperating_responders=True)
        self._info = self._registered = info
        self._day = day
        # Peers must hold the new name before the old one's goodbye, or they flicker gone.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(GOODBYE_TIMEOUT):
                await announce
        if old is not None and old.name != info.name:
            goodbye = await azc.async_unregister_service(old)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(GOODBYE_TIMEOUT):
                    await goodbye
        logger.info("mDNS markers rotated")

    async def _restart(self) -> None:
        await self._stop_zeroconf()
        if not self._closed:
            await self._try_start_zeroconf()

    # ------------------------------------------------------------ browsing

    def _refresh_book(self) -> None:
        """Re-read the known devices; if the set changed, resolve the cached advertisements
        that now map to a known device. Whoever reads the change first (the liveness tick, a
        browser callback, a unicast probe) does it: a reader that only updated the book would
        leave the others nothing to notice, and a newly known device's cached advertisement
        would stay unresolved."""
        known = frozenset(self._known())
        self._book.update(known, self._clock())
        changed = known != self._known_last
        self._known_last = known
        if changed:
            self._rescan()

    def _on_state(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        try:
            if state_change is ServiceStateChange.Removed:
                for table in (self._peers, self._lost):
                    for device_id, peer in list(table.items()):
                        if peer.instance.lower() == name.lower():
                            self._gone(device_id, forget=True)
                return
            marker = marker_of(name)
            if marker is None:
                return
            self._refresh_book()
            if self._book.device_for_marker(marker) is not None:
                self._resolve_soon(name)
        except Exception:
            logger.exception("discovery browser callback failed")

    def _resolve_soon(self, name: str) -> None:
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
            azc = self._zc
            if azc is None:
                return
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if not await info.async_request(azc.zeroconf, RESOLVE_TIMEOUT_MS, question_type=QM):
                return
            addresses = tuple(sorted(info.parsed_addresses(IPVersion.V4Only)))
            props = dict(info.properties)
            self._sighted(name, props, addresses, info.port, info.server or "", "mdns")
        except Exception:
            logger.exception("resolving a peer failed")
        finally:
            self._resolving.discard(name)
            if name in self._resolve_again:
                self._resolve_again.discard(name)
                self._resolve_soon(name)

    def _rescan(self) -> None:
        """Resolve cached instances that newly map to a known device (the known set changed)."""
        azc = self._zc
        if azc is None:
            return
        for record in azc.zeroconf.cache.async_all_by_details(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN):
            if isinstance(record, DNSPointer):
                marker = marker_of(record.alias)
                if marker is not None and self._book.device_for_marker(marker) is not None:
                    self._resolve_soon(record.alias)

    def _sighted(
        self,
        name: str,
        props: dict[bytes, bytes | None],
        addresses: tuple[str, ...],
        port: int | None,
        host: str,
        via: Via,
    ) -> None:
        txt = decode_txt(props)
        if txt is None or marker_of(name) != txt.device:
            logger.debug("advertisement dropped (malformed TXT or name mismatch): %.80s", name)
            return
        self._refresh_book()
        if not self._book.is_ours(txt):
            return  # another account's device (or a stranger): not ours to list
        device_id = self._book.device_for(txt)
        if device_id is None or device_id == self.device_id or not port or not addresses:
            return
        self._record(device_id, addresses, port, name, host, via)

    def _record(
        self, device_id: str, addresses: tuple[str, ...], port: int, name: str, host: str, via: Via
    ) -> None:
        peer = PeerSighting(
            device_id=device_id,
            addresses=addresses,
            port=port,
            last_seen=self._clock(),
            instance=name,
            host=host,
            via=via,
        )
        old = self._peers.get(device_id)
        if old is not None and old.via == "mdns" and via == "unicast" and not name:
            # A unicast probe confirms an mDNS sighting; it does not replace it.
            self._peers[device_id] = _seen(old, peer.last_seen)
            self._live.heard(device_id, _mono())
            return
        self._lost.pop(device_id, None)
        self._peers[device_id] = peer
        self._live.heard(device_id, _mono())
        self._index()
        if old is None or (old.addresses, old.port) != (addresses, port):
            self._emit(DiscoveryEvent("nearby", peer))

    def _gone(self, device_id: str, *, forget: bool) -> None:
        peer = self._peers.pop(device_id, None)
        if forget:
            self._lost.pop(device_id, None)
            self._live.forget(device_id)
        elif peer is not None:
            self._lost[device_id] = peer
        self._index()
        if peer is not None:
            self._emit(DiscoveryEvent("gone", peer))

    def _index(self) -> None:
        names: dict[str, str] = {}
        for table in (self._lost, self._peers):
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

    # ------------------------------------------------------------ liveness

    def _on_record(self, name: str) -> None:
        device_id = self._names.get(name.lower())
        if device_id is None:
            return
        self._heard(device_id)

    def _heard(self, device_id: str) -> None:
        verdict = self._live.heard(device_id, _mono())
        waiter = self._waiters.get(device_id)
        if waiter is not None:
            waiter.set()
        peer = self._peers.get(device_id)
        if peer is not None:
            self._peers[device_id] = _seen(peer, self._clock())
        if verdict == "revived":
            self._revive(device_id)

    def _revive(self, device_id: str) -> None:
        lost = self._lost.get(device_id)
        if lost is None:
            return
        logger.info("peer back (liveness): %s", device_id)
        if lost.instance and lost.via == "mdns":
            self._resolve_soon(lost.instance)  # current addresses and port from the cache
        else:
            self._record(device_id, lost.addresses, lost.port, lost.instance, lost.host, lost.via)

    async def _liveness_loop(self) -> None:
        while True:
            try:
                self._refresh_book()
                for device_id in self._live.due(_mono()):
                    self._spawn(self._check(device_id))
            except Exception:
                logger.exception("discovery liveness tick failed")
            await asyncio.sleep(min(TICK, self._live.policy.retry_after))

    async def _check(self, device_id: str) -> None:
        peer = self._peers.get(device_id) or self._lost.get(device_id)
        if peer is None:
            self._live.forget(device_id)
            return
        ok = await self._is_alive(peer)
        verdict = self._live.checked(device_id, _mono(), ok=ok)
        if verdict == "gone":
            logger.info("peer gone (liveness): %s", device_id)
            self._gone(device_id, forget=False)
        elif verdict == "revived":
            self._revive(device_id)
        elif verdict == "forgotten":
            self._lost.pop(device_id, None)
            self._index()

    async def _is_alive(self, peer: PeerSighting) -> bool:
        """Ask the peer's responder for its SRV record; then the caller's probe, if any."""
        if peer.via == "unicast" and await self._unicast_alive(peer):
            return True
        waiter = asyncio.Event()
        self._waiters[peer.device_id] = waiter
        try:
            azc = self._zc
            if azc is not None and peer.instance:
                out = DNSOutgoing(_FLAGS_QUERY)
                out.add_question(DNSQuestion(peer.instance, _TYPE_SRV, _CLASS_IN))
                azc.zeroconf.async_send(out)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._live.policy.check_timeout):
                    await waiter.wait()
                    return True
        finally:
            if self._waiters.get(peer.device_id) is waiter:
                del self._waiters[peer.device_id]
        if self._probe is None:
            return False
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                return bool(await self._probe(peer))
        except (OSError, TimeoutError):
            return False
        except Exception:
            logger.exception("liveness probe failed")
            return False

    async def _unicast_alive(self, peer: PeerSighting) -> bool:
        """Check a peer found over unicast the same way (multicast may be blocked)."""
        try:
            if not peer.instance:
                if self._unicast_probe is None:
                    return False
                async with asyncio.timeout(PROBE_TIMEOUT):
                    return await self._unicast_probe(peer.addresses[0], peer.port) == peer.device_id
            for address in peer.addresses[:4]:
                if any(f[0].lower() == peer.instance.lower() for f in await unicast_query(address)):
                    return True
        except (OSError, TimeoutError):
            return False
        except Exception:
            logger.exception("unicast liveness check failed")
        return False

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
                self._sighted(name, props, addresses, srv_port, server, "unicast")
            return
        if self._unicast_probe is None:
            return
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                device_id = await self._unicast_probe(host, port)
        except (OSError, TimeoutError):
            return
        self._refresh_book()
        if device_id is None or device_id == self.device_id:
            return
        if device_id not in (self._known_last or frozenset()):
            return
        self._record(device_id, (host,), port, "", "", "unicast")

    # ------------------------------------------------------------ queries

    def peers(self) -> list[PeerSighting]:
        """Devices of our account currently nearby."""
        return sorted(self._peers.values(), key=lambda p: p.device_id)

    def lookup(self, device_id: str) -> PeerSighting | None:
        """Where ``device_id`` was seen, if it is nearby."""
        return self._peers.get(device_id)


def _mono() -> float:
    return time.monotonic()


def _seen(peer: PeerSighting, now: float) -> PeerSighting:
    return replace(peer, last_seen=now)


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


async def _quietly(announce: Awaitable[Any]) -> None:
    """Await a zeroconf announcement task; its failure is logged, not raised."""
    try:
        await announce
    except Exception:
        logger.warning("mDNS announcement failed", exc_info=True)
