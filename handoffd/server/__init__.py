"""handoff-server: accounts, pairing invites, device certificates, revocation, presence, signaling.

Kept import-free so the daemon side (``handoffd.serverclient``) can use the pure
helpers in ``handoffd.server.auth`` and ``handoffd.server.pairing`` without
loading the server.
"""
