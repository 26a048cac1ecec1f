"""Transports: the Channel/Dialer interface (base), WebRTC (webrtc), LAN signaling (signaling).

Importing this package does not import aiortc; ``handoffd.transport.webrtc`` does.
"""

from __future__ import annotations

from handoffd.transport.base import (
    MAX_MESSAGE,
    PATH_DIRECT,
    PATH_RELAY,
    Channel,
    Dialer,
    LocalIdentity,
    PeerAuthError,
    PeerRefusedError,
)

__all__ = [
    "MAX_MESSAGE",
    "PATH_DIRECT",
    "PATH_RELAY",
    "Channel",
    "Dialer",
    "LocalIdentity",
    "PeerAuthError",
    "PeerRefusedError",
]
