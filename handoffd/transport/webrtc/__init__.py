"""WebRTC data channels (aiortc) bound to device identities; the only module importing aiortc.

aiortc makes a fresh self-signed DTLS certificate per connection, so identity
is bound in three steps (docs/transport.md has the whole argument):

1. The offer and the answer travel as envelopes signed by the device keys
   (``webrtc-offer`` / ``webrtc-answer``); each payload lists the sender's DTLS
   fingerprints, and every ``a=fingerprint`` of the SDP must be one of them.
2. aiortc's DTLS handshake checks the peer's certificate against the remote
   SDP's fingerprints (``RTCDtlsTransport._validate_peer_identity``); we check
   the negotiated peer certificate again ourselves.
3. Before any application byte, each side sends a confirmation signed by its
   device key over both nonces, both device ids, both DTLS fingerprints and a
   DTLS keying-material exporter value (RFC 5705), so both ends prove they
   hold the device key *and* terminate this very DTLS session.

Layout: ``binding`` (pure: SDP, payloads, confirmations), ``peer`` (aiortc
plumbing and options), ``channel`` (the Channel), ``connect`` (connect, accept).
"""

from __future__ import annotations

from handoffd.transport.base import MAX_MESSAGE
from handoffd.transport.webrtc.binding import (
    PURPOSE_ANSWER,
    PURPOSE_OFFER,
    Binding,
    Description,
    check_sdp,
    sdp_fingerprints,
)
from handoffd.transport.webrtc.channel import HIGH_WATER, WebRtcChannel
from handoffd.transport.webrtc.connect import Accepted, Signal, WebRtcDialer, accept, connect
from handoffd.transport.webrtc.peer import IceServer, WebRtcOptions

__all__ = [
    "HIGH_WATER",
    "MAX_MESSAGE",
    "PURPOSE_ANSWER",
    "PURPOSE_OFFER",
    "Accepted",
    "Binding",
    "Description",
    "IceServer",
    "Signal",
    "WebRtcChannel",
    "WebRtcDialer",
    "WebRtcOptions",
    "accept",
    "check_sdp",
    "connect",
    "sdp_fingerprints",
]
