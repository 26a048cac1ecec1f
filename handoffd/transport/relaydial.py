"""Dialing and answering relay sessions: ask the server for a session, join it, run TLS inside.

The server side is reached only through two small protocols (``RelayOpener``,
the device's WebSocket to its server, and ``RelayJoiner``, which joins a
session's byte stream): ``handoffd.serverlink`` provides both, tests may pass
their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from handoffd import identity
from handoffd.errors import HandoffError, ServerError, TransportError
from handoffd.tasks import TaskSet
from handoffd.transport.base import Channel, Dialer, LocalIdentity
from handoffd.transport.relay import CLOSE_TIMEOUT, ByteStream, RelayChannel, RelayOptions
from handoffd.wire.messages import RelayTicket

__all__ = [
    "RelayDialer",
    "RelayJoiner",
    "RelayListener",
    "RelayOpener",
    "RelayStreamLike",
    "accept",
]

logger = logging.getLogger("handoffd.transport.relay")


class RelayStreamLike(ByteStream, Protocol):
    """A joined relay stream whose send stall limit the dialer sets."""

    stall_timeout: float


class RelayOpener(Protocol):
    """The device's link to its server, as far as opening relay sessions goes."""

    @property
    def connected(self) -> bool:
        """True while authenticated on a live connection."""

    @property
    def online(self) -> frozenset[str]:
        """The account's online device ids."""

    async def open_relay(self, to_device: str, *, deadline: float | None = None) -> RelayTicket:
        """A ticket for a new relay session to ``to_device``."""

    async def close_relay(self, session: str) -> None:
        """Abandon a session not joined (best effort)."""


class RelayJoiner(Protocol):
    """Joins a relay session's byte stream with its ticket."""

    async def relay_stream(
        self, ticket: RelayTicket, *, deadline: float | None = None
    ) -> RelayStreamLike:
        """The started stream (both sides in), or ServerError."""


def _transport_error(exc: ServerError) -> TransportError:
    return TransportError(exc.message, code=exc.code)


class RelayDialer(Dialer):
    """Dials a device through the server relay (initiator = TLS client)."""

    name = "relay"

    def __init__(
        self,
        local: LocalIdentity,
        client: RelayJoiner,
        link: RelayOpener,
        options: RelayOptions | None = None,
    ) -> None:
        self._local = local
        self._client = client
        self._link = link
        self._options = options or RelayOptions()

    def plausible(self, peer_device_id: str) -> bool:
        """True while we are connected to the server and it lists the peer online."""
        return self._link.connected and peer_device_id in self._link.online

    async def dial(self, peer_device_id: str, *, deadline: float) -> Channel:
        """Open a relay session to ``peer_device_id`` and authenticate it by ``deadline``.

        TransportError codes: the server's (``target-unavailable``,
        ``relay-too-many``, ``rate-limited``, ``relay-peer-absent``, ...),
        ``server-offline``, ``connect-timeout``; PeerAuthError / PeerRefusedError.
        """
        local = self._local
        if not identity.is_device_id(peer_device_id) or peer_device_id == local.device_id:
            raise TransportError("not a peer device id", code="bad-peer")
        try:
            async with asyncio.timeout_at(deadline):
                ticket = await self._link.open_relay(peer_device_id, deadline=deadline)
                try:
                    stream = await self._client.relay_stream(ticket, deadline=deadline)
                except BaseException:
                    await _give_up(self._link, ticket)
                    raise
                stream.stall_timeout = self._options.send_stall_timeout
                return await RelayChannel.establish(
                    stream,
                    local,
                    server_side=False,
                    expected_peer=peer_device_id,
                    deadline=deadline,
                    options=self._options,
                )
        except TimeoutError:
            raise TransportError(
                "relay connection took longer than the deadline", code="connect-timeout"
            ) from None
        except ServerError as exc:
            raise _transport_error(exc) from None


async def _give_up(link: RelayOpener, ticket: RelayTicket) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await link.close_relay(ticket.session)


async def accept(
    ticket: RelayTicket,
    *,
    local: LocalIdentity,
    client: RelayJoiner,
    deadline: float | None = None,
    options: RelayOptions | None = None,
) -> RelayChannel:
    """Join a relay session offered to us (target = TLS server) and authenticate the initiator."""
    options = options or RelayOptions()
    if ticket.initiator or not identity.is_device_id(ticket.peer) or ticket.peer == local.device_id:
        raise TransportError("not a relay offer from a peer", code="bad-peer")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + options.connect_timeout if deadline is None else deadline
    try:
        stream = await client.relay_stream(ticket, deadline=deadline)
    except ServerError as exc:
        raise _transport_error(exc) from None
    stream.stall_timeout = options.send_stall_timeout
    return await RelayChannel.establish(
        stream,
        local,
        server_side=True,
        expected_peer=ticket.peer,
        deadline=deadline,
        options=options,
    )


class RelayListener:
    """Answers relay offers: pass ``on_relay`` to the server link (``ServerClient.connect``).

    Each offer is accepted in a task this object owns; an authenticated
    channel goes to ``on_channel`` (which then owns it); failures go to
    ``on_error`` (and the log). ``close()`` cancels what is in flight.
    """

    def __init__(
        self,
        local: LocalIdentity,
        client: RelayJoiner,
        on_channel: Callable[[RelayChannel], Awaitable[None]],
        *,
        on_error: Callable[[RelayTicket, HandoffError], None] | None = None,
        options: RelayOptions | None = None,
        max_pending: int = 8,
    ) -> None:
        self._local = local
        self._client = client
        self._on_channel = on_channel
        self._on_error = on_error
        self._options = options or RelayOptions()
        self._max_pending = max_pending
        self._tasks = TaskSet("relay listener")
        self._closed = False

    def on_relay(self, ticket: RelayTicket) -> None:
        """A relay offer from the server (synchronous: the link's callback)."""
        if self._closed or len(self._tasks) >= self._max_pending:
            logger.info("relay offer ignored peer=%s", ticket.peer)
            return
        self._tasks.spawn(self._accept(ticket), "relay-accept")

    async def _accept(self, ticket: RelayTicket) -> None:
        try:
            channel = await accept(
                ticket, local=self._local, client=self._client, options=self._options
            )
        except HandoffError as exc:
            logger.info("incoming relay failed peer=%s code=%s", ticket.peer, exc.code)
            if self._on_error is not None:
                self._on_error(ticket, exc)
            return
        try:
            await self._on_channel(channel)
        except Exception:
            logger.exception("relay channel handler failed")
            await channel.close()

    async def close(self) -> None:
        """Stop accepting and cancel accepts in flight (idempotent)."""
        self._closed = True
        await self._tasks.close()
