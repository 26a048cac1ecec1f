"""The handoff engine: builds its parts, wires them (arrows down, each part one job) and runs
their loops in one TaskGroup, each supervised (a crash is logged with its traceback and the
loop restarted with backoff). What it is given — the store, the device, the settings, the
event bus, the signaling listener, discovery and server-path factories — the composition
root (``handoffd.daemon``) builds.

The parts: ``records`` (the only writer of handoff state), ``presence`` (who is nearby or
online), ``links`` (the warm-link pool), ``outgoing`` / ``incoming`` / ``notices`` / ``apps``
(the flows), ``expiry``. The control API calls the methods below; they raise domain errors
(``NotFoundError``, ``ConflictError``, ``InvalidRequestError``) that it maps to statuses.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from handoffd.config import SettingsFile
from handoffd.devicestate import DeviceState
from handoffd.errors import EnvelopeError, HandoffError
from handoffd.events import EventBus
from handoffd.handoff.alerts import Alerts
from handoffd.handoff.apps import Apps
from handoffd.handoff.consent import Consent
from handoffd.handoff.desktop import Desktop
from handoffd.handoff.expiry import Expiry
from handoffd.handoff.inboxops import InboxOps
from handoffd.handoff.incoming import Incoming
from handoffd.handoff.kept import Kept
from handoffd.handoff.lanes import LaneService
from handoffd.handoff.link import IncomingExchange, LinkEvent, ResumedOnLink
from handoffd.handoff.links import LinkPool
from handoffd.handoff.local import LocalDevice
from handoffd.handoff.notices import Notices
from handoffd.handoff.outgoing import Outgoing
from handoffd.handoff.presence import Board, MakeDiscovery, MakeServerPath, Presence, Signaling
from handoffd.handoff.receivers import Receivers
from handoffd.handoff.records import Records
from handoffd.handoff.refusals import RefusalLog
from handoffd.handoff.sendables import BUILTIN_APPS, Sendable
from handoffd.handoff.staging import Staging
from handoffd.handoff.tables import EngineDB, InboxEntry
from handoffd.handoff.timings import Clock, Timings
from handoffd.paths import Paths
from handoffd.store import HandoffRecord, Store
from handoffd.tasks import TaskSet, supervise
from handoffd.transport.base import LocalIdentity
from handoffd.transport.connector import Connector
from handoffd.transport.webrtc import Accepted, WebRtcOptions

logger = logging.getLogger("handoffd.handoff.engine")


class AcceptOffer(Protocol):
    """Answers a signed WebRTC offer (``transport.webrtc.accept``)."""

    def __call__(
        self, *, local: LocalIdentity, offer_envelope: bytes, options: WebRtcOptions | None = None
    ) -> Awaitable[Accepted]:
        """The accepted offer (its answer, and its channel once connected)."""


MakeSignaling = Callable[
    [Callable[[bytes], Awaitable[bytes]], Callable[[], LocalIdentity]], Signaling
]
"""Builds the LAN signaling listener for an offer handler and the local identity."""


@dataclass(frozen=True, slots=True)
class EngineInputs:
    """What the composition root gives the engine."""

    store: Store
    device: DeviceState
    settings: SettingsFile
    events: EventBus
    paths: Paths
    board: Board
    timings: Timings
    clock: Clock
    environ: Mapping[str, str]
    make_signaling: MakeSignaling
    make_discovery: MakeDiscovery
    make_server_path: MakeServerPath
    accept_offer: AcceptOffer
    connector: Connector | None = None
    """Instead of the direct and relay dialers (in-memory paths in tests)."""


class Engine:
    """Handoffs in both directions, the inbox and resumption for one daemon."""

    def __init__(self, inputs: EngineInputs) -> None:
        i = inputs
        t = i.timings
        self.timings = t
        self.tasks = TaskSet("handoff engine")
        self.local = LocalDevice(i.device)
        self.db = EngineDB(i.store)
        self.staging = Staging(i.paths.partial, i.paths.inbox)
        self.refusals = RefusalLog(
            i.board.refusals,
            i.events.publish,
            interval=t.refused_event_interval,
            clock=i.clock.mono,
            wall=i.clock.wall,
        )
        self.records = Records(
            i.store, self.db, i.events, i.clock, self.tasks, progress_interval=t.progress_interval
        )
        self.signaling = i.make_signaling(self._on_lan_signal, self.local.identity)
        self.presence = Presence(
            store=i.store,
            device=i.device,
            settings=i.settings,
            events=i.events,
            board=i.board,
            local=self.local,
            clock=i.clock,
            timings=t,
            signaling=self.signaling,
            make_discovery=i.make_discovery,
            make_server_path=i.make_server_path,
            refusals=self.refusals,
        )
        self.links = LinkPool(
            presence=self.presence,
            local=self.local,
            clock=i.clock,
            timings=t,
            tasks=self.tasks,
            on_event=self._on_link_event,
            connector=i.connector,
        )
        self.presence.on_server_request = self._on_server_signal
        self.presence.on_relay_channel = self.links.adopt_relay
        self.lanes = LaneService(
            local=self.local, timings=t, refusals=self.refusals, on_channel=self.links.adopt_lane
        )
        self.presence.lane = self.lanes
        self.apps = Apps(
            store=i.store,
            db=self.db,
            settings=i.settings,
            events=i.events,
            paths=i.paths,
            environ=i.environ,
            clock=i.clock,
            tasks=self.tasks,
            launch_interval=t.launch_interval,
        )
        self.outgoing = Outgoing(
            store=i.store,
            records=self.records,
            settings=i.settings,
            local=self.local,
            presence=self.presence,
            links=self.links,
            clock=i.clock,
            timings=t,
            tasks=self.tasks,
        )
        self.desktop = Desktop(i.settings)
        self.consent = Consent(i.settings, self.desktop, i.events, i.clock, self.tasks.spawn)
        self.alerts = Alerts(i.events, self.desktop, self.records)
        self.incoming = Incoming(
            store=i.store,
            records=self.records,
            staging=self.staging,
            device=i.device,
            settings=i.settings,
            local=self.local,
            links=self.links,
            clock=i.clock,
            timings=t,
            tasks=self.tasks,
            on_received=self._on_received,
            consent=self.consent,
        )
        self.receivers = Receivers(i.settings)
        self.incoming.lanes = self.lanes
        self.notices = Notices(
            store=i.store,
            records=self.records,
            settings=i.settings,
            local=self.local,
            presence=self.presence,
            links=self.links,
            clock=i.clock,
            timings=t,
            on_resumed=self.outgoing.on_resumed,
        )
        self.expiry = Expiry(
            store=i.store,
            db=self.db,
            staging=self.staging,
            settings=i.settings,
            events=i.events,
            clock=i.clock,
            interval=t.sweep_interval,
        )
        self.inbox_ops = InboxOps(
            store=i.store,
            records=self.records,
            staging=self.staging,
            notices=self.notices,
            receivers=self.receivers,
            apps=self.apps,
            consent=self.consent,
            clock=i.clock,
        )
        self.kept = Kept(
            notices=self.notices,
            records=self.records,
            local=self.local,
            events=i.events,
            clock=i.clock,
        )
        self._accept_offer = i.accept_offer
        self.ready = asyncio.Event()

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Serve until cancelled (the daemon's TaskGroup owns this)."""
        await asyncio.to_thread(self.staging.clean_tmp)
        try:
            async with asyncio.TaskGroup() as tg:
                self.tasks.bind(tg)
                loops: dict[str, Callable[[], Awaitable[None]]] = {
                    "discovery": self.presence.discovery_loop,
                    "server-link": self.presence.server_loop,
                    "expiry": self.expiry.loop,
                    "notices": self.notices.loop,
                    "warm-links": self.links.janitor_loop,
                    "notifications": self.alerts.loop,
                }
                for name, loop in loops.items():
                    tg.create_task(supervise(loop, name), name=name)
                await self.outgoing.restart()
                logger.info("handoff engine ready")
                self.ready.set()
                await asyncio.Event().wait()
        finally:
            self.tasks.bind(None)
            await self.tasks.close()
            await self.links.close()
            await self.presence.close()

    @property
    def lane_port(self) -> int | None:
        """The LAN lane's port (None while not listening)."""
        return self.lanes.port

    @property
    def signaling_port(self) -> int | None:
        """The LAN signaling port (None while not listening)."""
        return self.presence.signaling_port

    # ------------------------------------------------------------ the API's operations

    async def start_handoff(
        self, session_id: str, target: str, types: Sequence[str] | None
    ) -> HandoffRecord:
        """Validate, record (``pending``) and start a handoff of ``session_id`` to ``target``."""
        return await self.outgoing.start(session_id, target, types)

    async def send_content(self, content: Sendable, target: str) -> HandoffRecord:
        """Publish ``content`` as a session and hand it to ``target`` at once (the session is
        withdrawn again if the handoff cannot start)."""
        store = self.outgoing.store
        session = await store.run(
            store.create_session, content.app_id, content.title, content.context, content.items
        )
        try:
            return await self.outgoing.start(session.id, target, None)
        except BaseException:
            await store.run(store.set_session_state, session.id, "withdrawn")
            raise

    async def cancel(self, handoff_id: str) -> HandoffRecord:
        """Cancel an outgoing handoff that is not yet delivered (idempotent once cancelled)."""
        return await self.outgoing.cancel(handoff_id)

    async def list_handoffs(self) -> list[dict[str, Any]]:
        """Every handoff as the API shows it."""
        return [self._with_kept(h) for h in await self.records.list_json()]

    async def get_handoff(self, handoff_id: str) -> dict[str, Any]:
        """One handoff as the API shows it."""
        return self._with_kept(await self.records.get_json(handoff_id))

    def _with_kept(self, h: dict[str, Any]) -> dict[str, Any]:
        h["kept_in_inbox"] = h["id"] in self.kept.kept
        return h

    async def inbox(self) -> list[InboxEntry]:
        """Received sessions still in the inbox."""
        return await self.notices.inbox()

    async def inbox_entry(self, entry_id: str) -> InboxEntry:
        """One inbox entry (NotFoundError if unknown or expired)."""
        return await self.notices.inbox_entry(entry_id)

    async def confirm_resumed(self, entry_id: str) -> InboxEntry:
        """The app resumed the entry: record it and tell the source (now or later)."""
        return await self.notices.confirm_resumed(entry_id)

    @property
    def app_clients(self) -> collections.Counter[str]:
        """Connected event-stream clients per app id."""
        return self.apps.clients

    # ------------------------------------------------------------ dispatch

    async def _on_received(self, entry: InboxEntry) -> None:
        """A session arrived: its app (launched if need be), else a built-in receiver."""
        if entry.app_id in BUILTIN_APPS and self.apps.clients[entry.app_id] == 0:
            store = self.outgoing.store
            if await store.run(store.get_app, entry.app_id) is None:
                self.tasks.spawn(self._builtin(entry), "built-in-receiver")
                return
        if not await self.apps.received(entry):
            self.tasks.spawn(self.kept.tell(entry), "kept-notice")

    async def _builtin(self, entry: InboxEntry) -> None:
        if await self.receivers.take(entry):
            await self.notices.confirm_resumed(entry.id)
        else:
            await self.kept.tell(entry)

    def _on_link_event(self, event: LinkEvent) -> None:
        if isinstance(event, IncomingExchange):
            self.incoming.receive(event.link, event.exchange, event.first)
        elif isinstance(event, ResumedOnLink):
            self.tasks.spawn(
                _ignore_result(self.outgoing.on_resumed(event.handoff_id, event.link.peer_id)),
                "resumed-on-link",
            )

    async def _on_lan_signal(self, data: bytes) -> bytes:
        return await self._on_signal(data, "signaling")

    async def _on_server_signal(self, data: bytes) -> bytes:
        return await self._on_signal(data, "server")

    async def _on_signal(self, data: bytes, path: str) -> bytes:
        """An envelope on the signaling port or through the server: a resume notice (its
        purpose says so), or a WebRTC offer."""
        local = self.local.identity()
        for on_notice in (self.notices.on_notice, self.kept.on_notice):
            try:
                return await on_notice(local, data)
            except EnvelopeError as exc:
                if exc.code != "envelope-wrong-context":
                    self.refusals.add(exc.code, path)
                    raise
        try:
            accepted = await self._accept_offer(
                local=local,
                offer_envelope=data,
                options=await self.links.webrtc_options("server" if path == "server" else "lan"),
            )
        except HandoffError as exc:
            self.refusals.add(exc.code, path)
            raise
        self.tasks.spawn(self._connect_incoming(accepted), "incoming-link")
        return accepted.answer

    async def _connect_incoming(self, accepted: Accepted) -> None:
        try:
            channel = await accepted.channel()
        except HandoffError as exc:
            logger.info("incoming connection failed code=%s", exc.code)
            return
        self.links.adopt(channel)


async def _ignore_result(coro: Awaitable[bool]) -> None:
    await coro
