"""The LAN lane in the engine: the target's listener and offers, the sender's move onto it.

Target (``LaneService``): while the LAN signaling listener is up, a lane listener
(``handoffd.transport.lane.LaneServer``) is too. When it accepts an offer whose bytes still
to come reach ``Timings.lane_min_bytes``, over a link that is not the lane already, from a
sender whose hello lists the ``lane`` feature, it issues a token bound to the handoff and
both devices and sends a ``lane`` message (its addresses, port, token) with the ``accept``:
just before it to a sender whose hello lists ``lane-early``, else right after it.
A lane connection that passes the checks becomes a link like any other; every refusal is
recorded (path ``lane``).

Sender (``LaneSwitch``, one per attempt): on that message it dials the lane, holding its
first window back for up to ``Timings.lane_hold`` (``settle``), then lets the data channel
stream while the dial goes on; once the lane is up the sender stops at
the next chunk boundary (``PathSwitchError``), and offers again over the lane, where the
receiver answers with its checkpoints: no acknowledged byte is sent twice. If the lane
never comes up the transfer simply stays where it is; if it dies later, the attempt fails
and the retry connects as always (data channel first, then the relay).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from handoffd.discovery.netif import local_addresses
from handoffd.errors import HandoffError
from handoffd.handoff.local import LocalDevice
from handoffd.handoff.refusals import RefusalLog
from handoffd.handoff.timings import Timings
from handoffd.proto import messages as m
from handoffd.tasks import TaskSet
from handoffd.transport.base import PATH_LANE, Channel
from handoffd.transport.lane import LaneDialer, LaneOffer, LaneServer
from handoffd.transport.lanetoken import LaneTokens
from handoffd.transport.relay import RelayChannel

logger = logging.getLogger("handoffd.handoff.lanes")


def lane_hosts() -> list[str]:
    """The addresses this device offers its lane on (loopback only when it has nothing else)."""
    found = sorted(local_addresses())
    return found[:8] or ["127.0.0.1"]


class LaneService:
    """The target side: the lane listener, its tokens, and the ``lane`` offers."""

    def __init__(
        self,
        *,
        local: LocalDevice,
        timings: Timings,
        refusals: RefusalLog,
        on_channel: Callable[[RelayChannel], Awaitable[None]],
        hosts: Callable[[], Sequence[str]] = lane_hosts,
        host: str = "0.0.0.0",  # noqa: S104 - the LAN, as the signaling listener
    ) -> None:
        self.local = local
        self.timings = timings
        self._hosts = hosts
        self._tokens: LaneTokens | None = None
        self.server = LaneServer(
            host,
            timings.lane_port,
            local=local.identity,
            tokens=self.tokens,
            on_channel=on_channel,
            on_refused=lambda code: refusals.add(code, "lane"),
            handshake_timeout=timings.lane_handshake_timeout,
        )

    def tokens(self) -> LaneTokens:
        """The token store of this device (a new one when the device id changed)."""
        device_id = self.local.device_id
        if self._tokens is None or self._tokens.device_id != device_id:
            self._tokens = LaneTokens(device_id)
        return self._tokens

    @property
    def port(self) -> int | None:
        """The lane port while listening."""
        return self.server.port

    async def start(self) -> bool:
        """Listen (idempotent); False if the port could not be bound (the lane is then off)."""
        if self.timings.lane_min_bytes < 0:
            return False  # the lane is switched off
        return await self.server.start()

    async def close(self) -> None:
        """Stop listening (idempotent)."""
        await self.server.close()

    def offer(
        self, handoff_id: str, peer: str, *, path: str, features: Sequence[str], remaining: int
    ) -> m.Lane | None:
        """The ``lane`` message for this accepted offer, or None when the lane is not for it."""
        port = self.port
        min_bytes = self.timings.lane_min_bytes
        if (
            port is None
            or min_bytes < 0
            or remaining < min_bytes
            or path == PATH_LANE
            or m.FEATURE_LANE not in features
        ):
            return None
        hosts = tuple(self._hosts())[:8]
        if not hosts:
            return None
        token = self.tokens().issue(handoff_id, peer)
        logger.info("lane offered lane_port=%d hosts=%d", port, len(hosts))
        return m.Lane(handoff_id=handoff_id, hosts=hosts, port=port, token=token)


class LaneSwitch:
    """The sender side for one attempt: dial the offered lane once, hold it until taken."""

    def __init__(self, *, local: LocalDevice, timings: Timings, tasks: TaskSet) -> None:
        self._local = local
        self._timings = timings
        self._tasks = tasks
        self._task: asyncio.Task[None] | None = None
        self._ready: Channel | None = None
        self._closed = False

    def offered(self, peer: str, lane: m.Lane) -> None:
        """The receiver offered its lane: dial it in the background (once per attempt)."""
        if self._task is not None or self._closed:
            return
        offer = LaneOffer(lane.handoff_id, lane.hosts, lane.port, lane.token)
        try:
            self._task = self._tasks.spawn(self._dial(peer, offer), "lane-dial")
        except HandoffError:
            return  # the engine is stopping

    async def _dial(self, peer: str, offer: LaneOffer) -> None:
        t = self._timings
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            dialer = LaneDialer(
                self._local.identity(), offer, connect_timeout=t.lane_connect_timeout
            )
            channel = await dialer.dial(peer, deadline=loop.time() + t.lane_dial_timeout)
        except HandoffError as exc:
            logger.info("the lane was not reached code=%s", exc.code, extra={"peer": peer})
            return
        if self._closed:
            await channel.close()
            return
        logger.info(
            "the lane is ready dial_ms=%.0f", (loop.time() - started) * 1000, extra={"peer": peer}
        )
        self._ready = channel

    async def settle(self) -> None:
        """Wait up to ``Timings.lane_hold`` for a dial in progress (no-op without one)."""
        task = self._task
        if task is not None and not task.done():
            await asyncio.wait([task], timeout=self._timings.lane_hold)

    @property
    def ready(self) -> bool:
        """True when the lane is up and waits to be taken."""
        return self._ready is not None

    def take(self) -> Channel | None:
        """The lane channel if ready (the caller owns it now), else None."""
        ready, self._ready = self._ready, None
        return ready

    async def close(self) -> None:
        """Stop dialing and close a lane nobody took (idempotent)."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])
        ready, self._ready = self._ready, None
        if ready is not None:
            await ready.close()
