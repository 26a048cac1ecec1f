"""The LAN signaling listener, bound only while it is wanted (paired, not revoked, LAN discovery on).

An unpaired daemon has nothing to answer, and one with ``lan_discovery`` off
has asked not to be found on the LAN: neither keeps a listening socket.
Turning it back on binds again (a new ephemeral TLS certificate; a new port
unless ``HANDOFF_SIGNALING_PORT`` fixes it).
"""

from __future__ import annotations

import logging

from handoffd.errors import HandoffError
from handoffd.transport.signaling import Identity, OnOffer, SignalingServer

logger = logging.getLogger("handoffd.transport.lanlistener")


class LanListener:
    """Starts and stops one ``SignalingServer`` on demand; ``close()`` is idempotent."""

    def __init__(self, host: str, port: int, on_offer: OnOffer, *, local: Identity) -> None:
        self._host = host
        self._port = port
        self._on_offer = on_offer
        self._local = local
        self._server: SignalingServer | None = None

    @property
    def port(self) -> int | None:
        """The bound port while listening, else None."""
        if self._server is None:
            return None
        try:
            return self._server.port
        except HandoffError:
            return None

    async def start(self) -> bool:
        """Listen if not already; True when listening (a bind failure is logged, False)."""
        if self._server is not None:
            return True
        server = SignalingServer(self._host, self._port, self._on_offer, local=self._local)
        try:
            await server.start()
        except HandoffError as exc:
            logger.warning("signaling listener not started code=%s", exc.code)
            await server.close()
            return False
        self._server = server
        logger.info("signaling listener started signaling_port=%d", server.port)
        return True

    async def close(self) -> None:
        """Stop listening (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            await server.close()
            logger.info("signaling listener stopped")
