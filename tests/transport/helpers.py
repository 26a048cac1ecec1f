"""Test helpers: accounts and devices with real certificates, a callee behind a real SignalingServer."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from handoffd import identity as idn
from handoffd.errors import HandoffError
from handoffd.transport import webrtc
from handoffd.transport.base import Channel, LocalIdentity
from handoffd.transport.signaling import SignalingServer, send_offer


def utcnow() -> dt.datetime:
    """Now, as the certificates see it (envelopes use the wall clock)."""
    return dt.datetime.now(dt.UTC)


@dataclasses.dataclass
class Device:
    """One device: its key, certificate and the LocalIdentity built from them."""

    key: Ed25519PrivateKey
    cert: x509.Certificate
    local: LocalIdentity

    @property
    def id(self) -> str:
        return self.local.device_id


class Account:
    """An account CA that issues device certificates and CRLs."""

    def __init__(self) -> None:
        self.ca = idn.create_account_ca(idn.new_account_id(), now=utcnow())
        self.trust = idn.TrustAnchor.from_ca(self.ca.cert)

    def device(
        self,
        *,
        issued: dt.datetime | None = None,
        lifetime: dt.timedelta = idn.DEVICE_CERT_LIFETIME,
        trust: idn.TrustAnchor | None = None,
    ) -> Device:
        key = idn.generate_device_key()
        cert = idn.build_device_cert(
            self.ca,
            key.public_key(),
            device_id=idn.device_id_for(key.public_key()),
            now=issued or utcnow(),
            lifetime=lifetime,
        )
        local = LocalIdentity(key=key, cert_der=idn.cert_to_der(cert), trust=trust or self.trust)
        return Device(key=key, cert=cert, local=local)

    def trust_revoking(self, *devices: Device) -> idn.TrustAnchor:
        crl = idn.issue_crl(
            self.ca,
            [idn.Revoked(serial=d.cert.serial_number, revoked_at=utcnow()) for d in devices],
            number=1,
            now=utcnow(),
        )
        return self.trust.with_crl(crl)


@dataclasses.dataclass
class Callee:
    """A device answering offers on a real SignalingServer, the way the daemon will."""

    device: Device
    options: webrtc.WebRtcOptions = dataclasses.field(default_factory=webrtc.WebRtcOptions)
    channels: asyncio.Queue[Channel] = dataclasses.field(default_factory=asyncio.Queue)
    errors: list[HandoffError] = dataclasses.field(default_factory=list)
    accepted: list[webrtc.Accepted] = dataclasses.field(default_factory=list)
    offers: list[bytes] = dataclasses.field(default_factory=list)
    tamper_binding: bool = False

    def __post_init__(self) -> None:
        self.server = SignalingServer(
            "127.0.0.1", 0, self.on_offer, local=lambda: self.device.local
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._open: list[Channel] = []
        self.done = asyncio.Event()

    async def on_offer(self, offer: bytes) -> bytes:
        self.offers.append(offer)
        try:
            acc = await webrtc.accept(
                local=self.device.local, offer_envelope=offer, options=self.options
            )
        except HandoffError as exc:
            self.errors.append(exc)
            self.done.set()
            raise
        if self.tamper_binding:
            acc._binding = dataclasses.replace(acc._binding, answer_nonce=bytes(16))
        self.accepted.append(acc)
        task = asyncio.create_task(self._finish(acc))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return acc.answer

    async def _finish(self, acc: webrtc.Accepted) -> None:
        try:
            ch = await acc.channel()
        except HandoffError as exc:
            self.errors.append(exc)
        else:
            self._open.append(ch)
            await self.channels.put(ch)
        finally:
            self.done.set()

    def signal(
        self,
        tamper: Callable[[bytes], bytes] | None = None,
        caller: LocalIdentity | None = None,
    ) -> webrtc.Signal:
        """Send offers here; ``caller`` checks the listener's proof (default: this device's trust)."""

        async def signal(offer: bytes) -> bytes:
            if tamper is not None:
                offer = tamper(offer)
            return await send_offer(
                "127.0.0.1",
                self.server.port,
                offer,
                local=caller or self.device.local,
                peer_device_id=self.device.id,
                timeout=20,
            )

        return signal

    async def __aenter__(self) -> Callee:
        await self.server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.close()
        for acc in self.accepted:
            await acc.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        for ch in self._open:
            await ch.close()
