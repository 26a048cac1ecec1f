"""Advertising over mDNS: the zeroconf responder with our record (the day's markers, our
addresses and port), followed through interface changes and the UTC day change; it also runs
the service browser and the record listener it is given."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from zeroconf import IPVersion, RecordUpdateListener, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from handoffd.discovery.dns import QM
from handoffd.discovery.netif import all_ipv4_addresses, is_ipv4, local_addresses
from handoffd.discovery.txt import (
    SERVICE_TYPE,
    VERSION,
    Txt,
    account_marker,
    day_of,
    device_marker,
    host_name,
    instance_name,
)

logger = logging.getLogger("handoffd.discovery")

START_TIMEOUT = 10.0
GOODBYE_TIMEOUT = 3.0
CLOSE_TIMEOUT = 5.0

OnState = Callable[[Zeroconf, str, str, ServiceStateChange], None]


class Advertiser:
    """Owns the zeroconf instance: registers, re-announces, rotates and withdraws our record."""

    def __init__(
        self,
        *,
        device_id: str,
        port: int,
        marker_key: bytes,
        interfaces: Sequence[str] | None,
        interface_poll: float,
        on_state: OnState,
        listener: RecordUpdateListener,
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
        own: Callable[[Awaitable[Any]], Awaitable[Any]],
        closed: Callable[[], bool],
        clock: Callable[[], float],
    ) -> None:
        """``on_state``: the browser's callback; ``listener`` hears every fresh record;
        ``own`` makes zeroconf's announcement tasks the owner's (cancelled by its close)."""
        self.device_id = device_id
        self.port = port
        self._key = marker_key
        self._interfaces = list(interfaces) if interfaces else None
        self._interface_poll = interface_poll
        self._on_state_cb = on_state
        self._listener = listener
        self._spawn = spawn
        self._own = own
        self._closed = closed
        self._clock = clock
        self._zc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None
        self._registered: AsyncServiceInfo | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._lock = asyncio.Lock()
        self._addresses: frozenset[str] = frozenset()
        self._day = -1
        self.registered = asyncio.Event()

    @property
    def zeroconf(self) -> AsyncZeroconf | None:
        """The running responder (None while it is down)."""
        return self._zc

    async def start(self) -> None:
        """Start the responder; on failure (no usable interface yet) clean up and log.

        The maintenance loop retries, so a device that boots without a network
        starts advertising once one appears.
        """
        try:
            await self._start_zeroconf()
        except asyncio.CancelledError:
            await self.stop()
            raise
        except Exception:
            logger.warning(
                "mDNS not started (retrying every %g s)", self._interface_poll, exc_info=True
            )
            await self.stop()

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
            self._addresses = frozenset(a for a in self._interfaces if is_ipv4(a))
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
            azc.zeroconf, SERVICE_TYPE, handlers=[self._on_state_cb], question_type=QM
        )

    async def _announced(self, announce: Awaitable[Any]) -> None:
        await announce
        self.registered.set()

    async def stop(self) -> None:
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
            if self._closed():
                return
            azc = self._zc
            if azc is None:
                await self.start()
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
        await self.stop()
        if not self._closed():
            await self.start()


async def _quietly(announce: Awaitable[Any]) -> None:
    """Await a zeroconf announcement task; its failure is logged, not raised."""
    try:
        await announce
    except Exception:
        logger.warning("mDNS announcement failed", exc_info=True)
