"""This device as the engine sees it: its transport identity (rebuilt when the certificate
changes), its hello, and CRLs learned from peers."""

from __future__ import annotations

import logging

from handoffd import envelope, identity
from handoffd.devicestate import DeviceState
from handoffd.errors import ConflictError, HandoffError
from handoffd.handoff.link import make_hello
from handoffd.proto import messages as m
from handoffd.transport.base import LocalIdentity

logger = logging.getLogger("handoffd.handoff.local")


class LocalDevice:
    """The paired device's identity for transports, cached per certificate."""

    def __init__(self, device: DeviceState) -> None:
        self.device = device
        self.replay = envelope.ReplayCache()
        self._local: LocalIdentity | None = None
        self._cert: bytes | None = None

    @property
    def device_id(self) -> str:
        """This device's id."""
        return self.device.device_id

    def identity(self) -> LocalIdentity:
        """The transport identity; ConflictError(not-paired) while not paired."""
        device = self.device
        if not device.paired or device.cert is None or device.trust is None:
            raise ConflictError("this device is not paired: pair it first", code="not-paired")
        cert_der = identity.cert_to_der(device.cert)
        if self._local is None or self._cert != cert_der:

            def trust() -> identity.TrustAnchor:
                if device.trust is None:  # pragma: no cover - paired devices keep it
                    raise HandoffError("no trust anchor", code="not-paired")
                return device.trust

            self._local = LocalIdentity(
                key=device.key, cert_der=cert_der, trust=trust, replay=self.replay
            )
            self._cert = cert_der
        return self._local

    def hello(self) -> m.Hello:
        """Our hello (with our CRL for gossip)."""
        return make_hello(self.device.device_id, self.device.trust)

    async def gossip(self, hello: m.Hello) -> None:
        """Keep the peer's CRL if it is newer and valid."""
        trust = self.device.trust
        if hello.crl is None or trust is None or hello.crl_number <= trust.crl_number:
            return
        try:
            crl = identity.load_crl(hello.crl)
            if await self.device.accept_crl(crl):
                logger.info("CRL learned from a peer number=%d", hello.crl_number)
        except HandoffError as exc:
            logger.info("peer CRL refused code=%s", exc.code)
