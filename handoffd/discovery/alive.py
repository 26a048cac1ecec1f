"""Liveness checks of LAN peers (``liveness.py`` decides; this runs the checks): every record
heard from a peer counts; a silent one is asked for its SRV record, then probed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from zeroconf import RecordUpdate, RecordUpdateListener, Zeroconf

# Not re-exported by zeroconf's __all__, but stable for years; used for the liveness query.
from zeroconf._dns import DNSQuestion
from zeroconf._protocol.outgoing import DNSOutgoing
from zeroconf.asyncio import AsyncZeroconf

from handoffd.discovery.browse import PeerBrowser, PeerSighting, mono, seen
from handoffd.discovery.dns import CLASS_IN, FLAGS_QUERY, TYPE_SRV
from handoffd.discovery.liveness import Liveness
from handoffd.discovery.unicast import unicast_query

logger = logging.getLogger("handoffd.discovery")

PROBE_TIMEOUT = 2.0
TICK = 0.5


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


class Heard(RecordUpdateListener):
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


class LivenessChecker:
    """Runs the checks ``Liveness`` asks for and applies its verdicts to the browser's table."""

    def __init__(
        self,
        *,
        browser: PeerBrowser,
        live: Liveness,
        zeroconf: Callable[[], AsyncZeroconf | None],
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
        clock: Callable[[], float],
        probe: Callable[[PeerSighting], Awaitable[bool]] | None = None,
        unicast_probe: Callable[[str, int], Awaitable[str | None]] | None = None,
    ) -> None:
        """``probe`` and ``unicast_probe``: as ``Discovery`` takes them."""
        self._browser = browser
        self._live = live
        self._zeroconf = zeroconf
        self._spawn = spawn
        self._clock = clock
        self._probe = probe
        self._unicast_probe = unicast_probe
        self._waiters: dict[str, asyncio.Event] = {}

    def on_record(self, name: str) -> None:
        """A record named ``name`` was heard (zeroconf's listener)."""
        device_id = self._browser.device_for_name(name)
        if device_id is None:
            return
        self._heard(device_id)

    def _heard(self, device_id: str) -> None:
        verdict = self._live.heard(device_id, mono())
        waiter = self._waiters.get(device_id)
        if waiter is not None:
            waiter.set()
        peer = self._browser.nearby.get(device_id)
        if peer is not None:
            self._browser.nearby[device_id] = seen(peer, self._clock())
        if verdict == "revived":
            self._revive(device_id)

    def _revive(self, device_id: str) -> None:
        lost = self._browser.lost.get(device_id)
        if lost is None:
            return
        logger.info("peer back (liveness): %s", device_id)
        if lost.instance and lost.via == "mdns":
            self._browser.resolve_soon(lost.instance)  # current addresses and port from the cache
        else:
            self._browser.record(
                device_id, lost.addresses, lost.port, lost.instance, lost.host, lost.via
            )

    async def run(self) -> None:
        """The liveness loop: every tick, start the checks that are due."""
        while True:
            try:
                self._browser.refresh_book()
                for device_id in self._live.due(mono()):
                    self._spawn(self._check(device_id))
            except Exception:
                logger.exception("discovery liveness tick failed")
            await asyncio.sleep(min(TICK, self._live.policy.retry_after))

    async def _check(self, device_id: str) -> None:
        peer = self._browser.nearby.get(device_id) or self._browser.lost.get(device_id)
        if peer is None:
            self._live.forget(device_id)
            return
        ok = await self._is_alive(peer)
        verdict = self._live.checked(device_id, mono(), ok=ok)
        if verdict == "gone":
            logger.info("peer gone (liveness): %s", device_id)
            self._browser.gone(device_id, forget=False)
        elif verdict == "revived":
            self._revive(device_id)
        elif verdict == "forgotten":
            self._browser.forget_lost(device_id)

    async def _is_alive(self, peer: PeerSighting) -> bool:
        """Ask the peer's responder for its SRV record; then the caller's probe, if any."""
        if peer.via == "unicast" and await self._unicast_alive(peer):
            return True
        waiter = asyncio.Event()
        self._waiters[peer.device_id] = waiter
        try:
            azc = self._zeroconf()
            if azc is not None and peer.instance:
                out = DNSOutgoing(FLAGS_QUERY)
                out.add_question(DNSQuestion(peer.instance, TYPE_SRV, CLASS_IN))
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
