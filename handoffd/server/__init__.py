"""handoff-server: accounts, pairing invites, device certificates, revocation, presence, signaling.

What the server and the devices both speak (request signatures, the WebSocket
challenge, invites, ICE answers, relay messages) lives in ``handoffd.wire``;
the device side never imports this package.
"""
