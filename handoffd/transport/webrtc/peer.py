"""aiortc peer-connection plumbing: options, ICE configuration, host candidates, our DTLS
fingerprints and SDP, closing."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

from handoffd.errors import TransportError
from handoffd.transport.webrtc.binding import Fingerprint

log = logging.getLogger("handoffd.transport")

DEFAULT_CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0
CHANNEL_LABEL = "handoff"
CHANNEL_ID = 0


@dataclass(frozen=True)
class IceServer:
    """A STUN or TURN server (only the first of each kind is used by aiortc)."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None


@dataclass(frozen=True)
class WebRtcOptions:
    """Connection settings.

    ``loopback``: None offers a 127.0.0.1 host candidate only when the host has
    no other address (a loopback-only machine or namespace); True always adds
    it; False never. ``host_addresses``, if set, replaces interface discovery:
    host candidates are gathered on exactly those addresses.
    """

    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    ice_servers: tuple[IceServer, ...] = ()
    loopback: bool | None = None
    host_addresses: tuple[str, ...] | None = None
    send_stall_timeout: float = 60.0
    ice_doubt: float = 0.15
    """No ICE pair succeeded this long after the answer was applied: the dialer doubts its
    path (a racing connector starts the relay at once; the direct attempt goes on)."""
    ack_silence: float = 4.0
    """Data outstanding on the association without acknowledgement progress this long:
    the peer is gone (the channel fails with ``peer-silent``; 0: no watch)."""


def configuration(options: WebRtcOptions) -> RTCConfiguration:
    """aiortc's configuration: exactly our ICE servers (none if none are given)."""
    # An explicit (possibly empty) list: aiortc's default is a public STUN server.
    servers = [
        RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential)
        for s in options.ice_servers
    ]
    return RTCConfiguration(iceServers=servers)


def host_addresses(found: list[str], options: WebRtcOptions) -> list[str]:
    """The addresses to gather host candidates on, given the interface addresses ``found``."""
    if options.host_addresses is not None:
        return list(options.host_addresses)
    addresses = list(found)
    if options.loopback or (options.loopback is None and not addresses):
        addresses.append("127.0.0.1")
    return addresses


def prepare_gathering(pc: RTCPeerConnection, options: WebRtcOptions) -> None:
    """Choose this connection's host candidate addresses (aioice skips 127.0.0.1).

    aioice's ``Connection.gather_candidates`` passes the interface addresses to
    ``get_component_candidates``; we wrap that method on this one instance
    only, so no global state changes.
    """
    sctp = pc.sctp
    if sctp is None:  # pragma: no cover - the data channel creates it
        raise TransportError("no SCTP transport", code="internal")
    conn: Any = sctp.transport.transport.iceGatherer._connection
    original = conn.get_component_candidates

    async def get_component_candidates(component: int, addresses: list[str], **kwargs: Any) -> Any:
        return await original(
            component=component, addresses=host_addresses(addresses, options), **kwargs
        )

    conn.get_component_candidates = get_component_candidates


def local_fingerprints(pc: RTCPeerConnection) -> list[Fingerprint]:
    """Our DTLS certificate's fingerprints on this connection."""
    sctp = pc.sctp
    if sctp is None:  # pragma: no cover
        raise TransportError("no SCTP transport", code="internal")
    return [(f.algorithm, f.value) for f in sctp.transport.getLocalParameters().fingerprints]


def local_sdp(pc: RTCPeerConnection) -> str:
    """Our current local description's SDP."""
    desc = pc.localDescription
    if desc is None:  # pragma: no cover
        raise TransportError("no local description", code="internal")
    return desc.sdp


async def close_pc(pc: RTCPeerConnection) -> None:
    """Close the peer connection, giving up (logged) after ``CLOSE_TIMEOUT``."""
    try:
        await asyncio.wait_for(pc.close(), CLOSE_TIMEOUT)
    except TimeoutError:
        log.warning("peer connection did not close in time")
