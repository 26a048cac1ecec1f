"""The transport interface: an authenticated, reliable, ordered message channel, and dialers.

Every path to a peer (the WebRTC data channel, the server relay's TLS stream)
implements ``Channel``; whatever opens one implements ``Dialer``. A channel is
only handed out once its peer is authenticated, so every byte a caller reads
from ``recv`` came from ``peer``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from handoffd import identity
from handoffd.envelope import ReplayCache
from handoffd.errors import TransportError

MAX_MESSAGE = 64 * 1024
"""The largest message ``Channel.send`` takes (aiortc's interoperable data channel size)."""

PATH_DIRECT = "direct"
PATH_RELAY = "relay"
PATH_LANE = "lane"
"""TLS 1.3 over TCP straight between two devices on one LAN (``handoffd.transport.lane``)."""


class PeerAuthError(TransportError):
    """The peer could not be authenticated; ``code`` says why (e.g. ``cert-revoked``).

    Dialers should not retry the same peer after this without new trust state
    (a newer CRL, a renewed certificate).
    """

    default_code = "auth-failed"


class PeerRefusedError(TransportError):
    """The peer refused us; ``peer_code`` is the reason it gave (informational only: unverified)."""

    default_code = "peer-refused"

    def __init__(self, message: str, *, peer_code: str, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.peer_code = peer_code


@dataclass(frozen=True)
class LocalIdentity:
    """What this device authenticates with and checks peers against.

    ``trust`` is either the current ``TrustAnchor`` or a callable returning it,
    so a daemon whose CRL changes (gossip, server fetch) passes a callable and
    every new connection sees the newest CRL.
    """

    key: Ed25519PrivateKey
    cert_der: bytes
    trust: identity.TrustAnchor | Callable[[], identity.TrustAnchor]
    replay: ReplayCache = field(default_factory=ReplayCache)

    def __post_init__(self) -> None:
        cert = identity.load_cert(self.cert_der)
        if identity.cert_device_id(cert) != self.device_id:
            raise ValueError("device certificate does not name this key's device id")

    @property
    def device_id(self) -> str:
        """Our device id (derived from the key)."""
        return identity.device_id_for(self.key.public_key())

    def current_trust(self) -> identity.TrustAnchor:
        """The trust anchor to verify a peer with right now."""
        trust = self.trust
        return trust if isinstance(trust, identity.TrustAnchor) else trust()


class Channel(abc.ABC):
    """A message-oriented, reliable, ordered channel to an authenticated peer.

    ``bytes_sent``/``bytes_received`` count application payload bytes only
    (nothing of the handshake), so tests can prove what crossed the wire.
    """

    path: str
    peer: identity.PeerIdentity
    bytes_sent: int = 0
    bytes_received: int = 0

    @abc.abstractmethod
    async def send(self, data: bytes) -> None:
        """Send one message of at most MAX_MESSAGE bytes; waits while the send buffer is full.

        Raises TransportError(channel-closed) once closed, (message-too-large)
        for an oversize message.
        """

    @abc.abstractmethod
    async def recv(self) -> bytes:
        """The next message; raises TransportError(channel-closed) once closed and drained."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the channel and release its resources; idempotent."""

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """True once the channel is closed (by either side or by failure)."""


class Dialer(abc.ABC):
    """Opens an authenticated Channel to one of the account's devices."""

    name: str

    @abc.abstractmethod
    async def dial(self, peer_device_id: str, *, deadline: float) -> Channel:
        """Connect to ``peer_device_id`` by ``deadline`` (event loop time) or raise TransportError."""


def check_message(data: bytes) -> None:
    """Raise TransportError(message-too-large) unless ``data`` fits one message."""
    if len(data) > MAX_MESSAGE:
        raise TransportError(
            f"message of {len(data)} bytes exceeds {MAX_MESSAGE}", code="message-too-large"
        )
