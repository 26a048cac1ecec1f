"""Resume notices: the target tells the source that its app resumed a session (signed
``handoff-resumed`` envelopes over LAN signaling or through the server, acknowledged by a
signed ``handoff-resumed-ack``), persisted and retried with backoff; and the inbox's API."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable

from handoffd import envelope
from handoffd.config import SettingsFile
from handoffd.errors import HandoffError, NotFoundError, ProtocolError, StoreError, TransportError
from handoffd.handoff import retry
from handoffd.handoff.links import LinkPool
from handoffd.handoff.local import LocalDevice
from handoffd.handoff.offer import check_handoff_id
from handoffd.handoff.presence import Presence
from handoffd.handoff.records import Records
from handoffd.handoff.tables import InboxEntry
from handoffd.handoff.timings import Clock, Timings
from handoffd.peering import ServerPath
from handoffd.proto import codec
from handoffd.proto import messages as m
from handoffd.store import Store
from handoffd.transport.base import LocalIdentity
from handoffd.transport.signaling import send_offer

logger = logging.getLogger("handoffd.handoff.notices")

PURPOSE_RESUMED = "handoff-resumed"
PURPOSE_RESUMED_ACK = "handoff-resumed-ack"

Route = Callable[[bytes], Awaitable[bytes]]


class Notices:
    """The inbox's ``resumed`` and the notices that carry it to the source."""

    def __init__(
        self,
        *,
        store: Store,
        records: Records,
        settings: SettingsFile,
        local: LocalDevice,
        presence: Presence,
        links: LinkPool,
        clock: Clock,
        timings: Timings,
        on_resumed: Callable[[str, str | None], Awaitable[bool]],
    ) -> None:
        self.store = store
        self.records = records
        self.db = records.db
        self.settings = settings
        self.local = local
        self.presence = presence
        self.links = links
        self.clock = clock
        self.timings = timings
        self.on_resumed = on_resumed
        self.wake = presence.came_online
        """Set to send due notices now (also when a device comes online)."""

    # ------------------------------------------------------------ the inbox

    async def inbox(self) -> list[InboxEntry]:
        """Received sessions still in the inbox."""
        return await self.store.run(self.db.inbox, None, states=("received", "resumed"))

    async def inbox_entry(self, entry_id: str) -> InboxEntry:
        """One entry; NotFoundError(inbox-not-found) if unknown or expired."""
        try:
            entries = await self.store.run(
                self.db.inbox, check_handoff_id(entry_id), states=("received", "resumed")
            )
        except ProtocolError:
            entries = []
        if entries:
            return entries[0]
        raise NotFoundError("no such inbox entry", code="inbox-not-found")

    async def confirm_resumed(self, entry_id: str) -> InboxEntry:
        """The app resumed the entry: record it and tell the source (now or later)."""
        entry = await self.inbox_entry(entry_id)
        if entry.state == "resumed":
            return entry
        now = self.clock.wall()
        await self.store.run(self.db.set_inbox_state, entry.id, "resumed", resumed_at=now)
        try:
            await self.records.set(entry.id, {}, state="resumed", error=None)
        except StoreError as exc:
            logger.warning("resumed not recorded error=%s", exc.code, extra={"handoff": entry.id})
        self.records.events.publish(
            {
                "type": "handoff.resumed",
                "handoff_id": entry.id,
                "direction": "in",
                "app_id": entry.app_id,
            }
        )
        # Told over a live link or not, a notice follows: a link can look alive for a while after
        # its peer died, and the source acknowledges a notice only once it has recorded it.
        told = await self._tell_on_link(entry.id)
        delay = self.timings.notice_after_link if told else 0.0
        await self.store.run(
            functools.partial(self.db.add_notice, delay=delay), entry.id, entry.from_device, now
        )
        self.wake.set()
        return (await self.store.run(self.db.inbox, entry.id))[0]

    async def _tell_on_link(self, handoff_id: str) -> bool:
        """Ask the driver of the exchange still open for this handoff, if any, to tell the source."""
        for link in self.links.all():
            ex = link.exchange
            if ex is None or ex.handoff_id != handoff_id or ex.role != "receiver" or link.closed:
                continue
            try:
                async with asyncio.timeout(self.timings.notice_timeout):
                    told = await asyncio.shield(ex.ask_resumed())
            except TimeoutError:
                return False
            if told:
                logger.info("source told over the open channel", extra={"handoff": handoff_id})
            return told
        return False

    # ------------------------------------------------------------ sending notices

    async def loop(self) -> None:
        """Send pending resume notices with backoff. A state database that cannot be written
        (a full disk) pauses them (a notice sent but not marked done goes again: the source
        answers it again)."""
        while True:
            try:
                wait = await self._send_due()
            except StoreError as exc:
                logger.warning("resume notices paused error=%s", exc.code)
                wait = self.timings.notice_store_retry
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.wake.wait()

    async def _send_due(self) -> float:
        """Send the notices that are due; seconds until the next one."""
        t = self.timings
        now = self.clock.wall()
        for handoff_id, device_id, attempts, created in await self.store.run(
            self.db.due_notices, now
        ):
            if now - created > self.settings.current.inbox_ttl:
                await self.store.run(self.db.notice_done, handoff_id)
                continue
            try:
                await self.send(handoff_id, device_id, PURPOSE_RESUMED, PURPOSE_RESUMED_ACK)
            except HandoffError as exc:
                if getattr(exc, "peer_code", None) == "handoff-not-found":
                    await self.store.run(self.db.notice_done, handoff_id)
                    continue
                delay = min(t.notice_max_delay, retry.backoff(attempts + 1, base=2.0))
                logger.info(
                    "resume notice not delivered code=%s retry_in=%.0f",
                    exc.code,
                    delay,
                    extra={"handoff": handoff_id},
                )
                retry_at = self.clock.wall() + delay
                await self.store.run(self.db.notice_retry, handoff_id, retry_at)
                continue
            await self.store.run(self.db.notice_done, handoff_id)
            logger.info("source told by notice", extra={"handoff": handoff_id})
        next_at = await self.store.run(self.db.next_notice_at)
        return 60.0 if next_at is None else max(0.05, min(60.0, next_at - self.clock.wall()))

    def routes(self, local: LocalIdentity, device_id: str) -> list[Route]:
        """Where to reach ``device_id``'s signaling: its LAN addresses, then the server."""
        routes: list[Route] = []
        timeout = self.timings.notice_timeout
        for host, port in self.presence.addresses(device_id):

            async def lan(sealed: bytes, host: str = host, port: int = port) -> bytes:
                return await send_offer(
                    host, port, sealed, local=local, peer_device_id=device_id, timeout=timeout
                )

            routes.append(lan)
        server = self.presence.server
        if server is not None and server.reachable(device_id):
            loop = asyncio.get_running_loop()

            async def via_server(sealed: bytes, server: ServerPath = server) -> bytes:
                return await server.request(device_id, sealed, deadline=loop.time() + timeout)

            routes.append(via_server)
        return routes

    async def send(self, handoff_id: str, device_id: str, purpose: str, ack_purpose: str) -> None:
        """One signed notice (``purpose``, about ``handoff_id``) to the source, LAN first, else
        through the server, until one route answers with its signed ``ack_purpose``."""
        local = self.local.identity()
        payload = codec.encode(m.Resumed(handoff_id=handoff_id))
        routes = self.routes(local, device_id)
        if not routes:
            raise TransportError("the source is not nearby or online", code="peer-not-found")
        last: HandoffError | None = None
        for route in routes:
            sealed = envelope.seal(
                local.key,
                local.cert_der,
                purpose=purpose,
                recipient=device_id,
                payload=payload,
                now=self.clock.wall(),
            )
            try:
                answer = await route(sealed)
                opened = envelope.open_envelope(
                    answer,
                    purpose=ack_purpose,
                    recipient=local.device_id,
                    trust=local.current_trust(),
                    now=self.clock.wall(),
                    replay=self.local.replay,
                )
            except HandoffError as exc:
                last = exc
                continue
            if opened.sender.device_id != device_id or opened.payload != payload:
                last = TransportError("wrong acknowledgement", code="notice-bad-ack")
                continue
            return
        raise last or TransportError("no route", code="peer-not-found")

    # ------------------------------------------------------------ receiving notices

    async def on_notice(self, local: LocalIdentity, data: bytes) -> bytes:
        """A resume notice from a target: mark our handoff resumed, answer with a signed ack.
        EnvelopeError(envelope-wrong-context) if ``data`` is not a notice."""
        return await self.receive(
            local, data, PURPOSE_RESUMED, PURPOSE_RESUMED_ACK, self.on_resumed
        )

    async def receive(
        self,
        local: LocalIdentity,
        data: bytes,
        purpose: str,
        ack_purpose: str,
        handle: Callable[[str, str], Awaitable[bool]],
    ) -> bytes:
        """Open a signed notice (``purpose``) about one of our outgoing handoffs, let
        ``handle(handoff_id, sender)`` take it (False: not a handoff to that device), answer
        with the signed ``ack_purpose``."""
        opened = envelope.open_envelope(
            data,
            purpose=purpose,
            recipient=local.device_id,
            trust=local.current_trust(),
            now=self.clock.wall(),
            replay=self.local.replay,
        )
        msg = codec.decode(opened.payload)
        if not isinstance(msg, m.Resumed):
            raise ProtocolError("notice carries no handoff id", code="notice-malformed")
        check_handoff_id(msg.handoff_id)
        if not await handle(msg.handoff_id, opened.sender.device_id):
            raise HandoffError("no such handoff to this device", code="handoff-not-found")
        return envelope.seal(
            local.key,
            local.cert_der,
            purpose=ack_purpose,
            recipient=opened.sender.device_id,
            payload=opened.payload,
            now=self.clock.wall(),
        )
