"""The warm-link pool: links to peers kept between handoffs, dialing new ones (direct or
relay, through the connector), adopting the ones peers open, closing idle ones, and moving a
relayed transfer to the direct path when it becomes ready."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from handoffd import peering
from handoffd.handoff.link import Link, LinkEvent
from handoffd.handoff.local import LocalDevice
from handoffd.handoff.presence import Presence
from handoffd.handoff.retry import path_error
from handoffd.handoff.timings import Clock, Timings
from handoffd.peering import DirectDialer, ServerPath
from handoffd.tasks import TaskSet
from handoffd.transport.base import PATH_RELAY, Channel
from handoffd.transport.connector import Connector, NoPathError, Upgrader
from handoffd.transport.webrtc import WebRtcOptions

logger = logging.getLogger("handoffd.handoff.links")


class LinkPool:
    """Every link this device has to its peers, by peer id."""

    def __init__(
        self,
        *,
        presence: Presence,
        local: LocalDevice,
        clock: Clock,
        timings: Timings,
        tasks: TaskSet,
        on_event: Callable[[LinkEvent], None],
        connector: Connector | None = None,
    ) -> None:
        self.presence = presence
        self.local = local
        self.clock = clock
        self.timings = timings
        self.tasks = tasks
        self.on_event = on_event
        self.links: dict[str, list[Link]] = {}
        self._direct = DirectDialer(
            local.identity, presence.addresses, lambda: presence.server, self.webrtc_options
        )
        self._fixed = connector
        """A connector given at construction (in-memory paths) instead of direct + relay."""
        self._connector: Connector | None = None
        self._connector_for: ServerPath | None = None

    def all(self) -> list[Link]:
        """Every link (a snapshot)."""
        return [link for links in self.links.values() for link in links]

    def adopt(self, channel: Channel) -> Link:
        """Start a link on an authenticated channel (the peer's, or ours) and keep it."""
        link = Link(channel, on_event=self.on_event, clock=self.clock.mono)
        self.links.setdefault(link.peer_id, []).append(link)
        link.start()
        return link

    async def adopt_relay(self, channel: Channel) -> None:
        """A relay channel a peer opened to us."""
        link = self.adopt(channel)
        logger.info("incoming relay link", extra={"peer": link.peer_id})

    async def adopt_lane(self, channel: Channel) -> None:
        """A lane channel a peer opened to us (its token checked)."""
        link = self.adopt(channel)
        logger.info("incoming lane link", extra={"peer": link.peer_id})

    async def webrtc_options(self, route: str) -> WebRtcOptions:
        """Off the LAN, with the STUN/TURN servers the server hands out; on it, without."""
        server = self.presence.server
        ice = () if server is None or route != "server" else await server.ice_servers()
        return WebRtcOptions(ice_servers=ice)

    def connector(self) -> Connector:
        """The connector for the current server path (it remembers which dialer made a channel)."""
        if self._fixed is not None:
            return self._fixed
        server = self.presence.server
        if self._connector_for is not server or self._connector is None:
            self._connector = peering.connector(
                self._direct, server, head_start=self.timings.head_start
            )
            self._connector_for = server
        return self._connector

    def lingering(self, peer_id: str) -> Link | None:
        """A link to ``peer_id`` whose last exchange only waits for ``resumed`` (alive a moment
        ago: no probe needed), reserved for the caller; None if there is none."""
        if self.timings.warm_idle <= 0:
            return None
        for link in self.links.get(peer_id, []):
            if not link.closed and link.lingering:
                link.reserve()
                logger.info("reusing a warm link", extra={"peer": peer_id})
                return link
        return None

    async def link_to(self, peer_id: str) -> Link:
        """A warm idle link to ``peer_id``, or a new one: direct (LAN or via the server) or relay."""
        t = self.timings
        lingering = self.lingering(peer_id)
        if lingering is not None:
            return lingering
        for link in list(self.links.get(peer_id, [])):
            idle = self.clock.mono() - link.last_used
            if link.closed or t.warm_idle <= 0 or link.busy or idle > t.warm_idle:
                continue
            link.reserve()  # before any await: no other handoff may take it now
            try:
                alive = await link.probe(t.warm_probe_timeout)
            except BaseException:
                link.release()
                raise
            if link.exchange is not None:  # the peer began an exchange on it meanwhile
                link.release()
                continue
            if not alive:  # the network changed under it, or the peer went away
                logger.info("a warm link did not answer: closed", extra={"peer": peer_id})
                link.release()
                await link.close()
                continue
            logger.info("reusing a warm link", extra={"peer": peer_id})
            return link
        loop = asyncio.get_running_loop()
        grace = self.clock.mono() + t.discovery_grace  # just started: discovery may need a moment
        sighted = self.presence.sighted
        while not self._direct.plausible(peer_id) and (left := grace - self.clock.mono()) > 0:
            sighted.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, 0.5)):
                    await sighted.wait()
        self.local.identity()  # not paired: refuse before dialing
        try:
            channel = await self.connector().connect(
                peer_id, deadline=loop.time() + t.connect_timeout
            )
        except NoPathError as exc:
            raise path_error(exc) from None
        return self.adopt(channel)

    def upgrader(self, link: Link) -> Upgrader | None:
        """While relayed, try the direct path now and then (its task owned by the engine)."""
        if link.channel.path != PATH_RELAY:
            return None
        if self.presence.server is None and self._fixed is None:
            return None
        t = self.timings
        return Upgrader(
            self.connector(), link.channel, first_delay=t.upgrade_first, interval=t.upgrade_every
        )

    async def janitor_loop(self) -> None:
        """Close warm links idle for longer than warm_idle; forget closed ones."""
        t = self.timings
        while True:
            await asyncio.sleep(t.janitor_interval)
            now = self.clock.mono()
            for peer, links in list(self.links.items()):
                for link in list(links):
                    keep = t.warm_idle if link.used else max(t.warm_idle, t.fresh_link_grace)
                    if link.closed or (not link.busy and now - link.last_used > keep):
                        logger.info("idle link closed", extra={"peer": peer})
                        links.remove(link)
                        await link.close()
                if not links:
                    self.links.pop(peer, None)

    async def close(self) -> None:
        """Close every link at once, bounded: each close may wait for the peer's acknowledgement."""
        closing = [link.close() for link in self.all()]
        self.links.clear()
        if closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timings.shutdown_links):
                    await asyncio.gather(*closing, return_exceptions=True)
