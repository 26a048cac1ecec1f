"""This device's identity and account membership: key, certificate, pinned CA, CRL, server pin.

``DeviceState.load`` makes the device key at first start (0600). Pairing
writes ``account-ca.crt``, ``crl.pem``, ``server.json`` (0600) and, last,
``device.crt``: the device certificate's presence is what "paired" means, so
a crash mid-pairing leaves an unpaired device, never a half-paired one.

The async methods (pair, invite, devices, revoke, renew, CRL refresh) talk to
the server through ``handoffd.serverlink`` and keep the files current; every
blocking file write runs in a thread. Call them from the event loop only.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from handoffd import identity
from handoffd.errors import ApiError, ConfigError, HandoffError, ServerError
from handoffd.paths import Paths
from handoffd.serverlink import CreatedInvite, DeviceRecord, Invite, ServerClient, parse_invite
from handoffd.serverlink.reach import server_fingerprint
from handoffd.wire.invite import pin_tag

logger = logging.getLogger("handoffd.device")

RENEW_BEFORE = dt.timedelta(days=10)
MAX_SERVER_JSON = 16 * 1024
SERVER_TIMEOUT = 5.0
LAST_SERVER = "last-server.json"
"""The server of the pairing ``unpair`` ended: ``handoff pair CODE`` alone goes there again."""


@dataclass(frozen=True, slots=True)
class ServerPin:
    """The server this device is paired with: URL and pinned TLS fingerprint (None for http),
    and the account's name as the server said at pairing (for display only)."""

    url: str
    fingerprint: str | None
    account_name: str | None = None

    def to_json(self) -> dict[str, Any]:
        """As stored in server.json."""
        return {"url": self.url, "fingerprint": self.fingerprint, "account_name": self.account_name}

    @classmethod
    def from_json(cls, data: Any) -> ServerPin:
        """Parse server.json's content; ConfigError if malformed."""
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("url"), str)
            or not isinstance(data.get("fingerprint"), (str, type(None)))
        ):
            raise ConfigError("server.json is malformed", code="server-json-invalid")
        name = data.get("account_name")
        return cls(
            url=data["url"],
            fingerprint=data["fingerprint"],
            account_name=name if isinstance(name, str) else None,
        )


def _write_public(path: Path, data: bytes) -> None:
    """Atomically write a public file (certificate, CRL): mode 0644."""
    identity.write_private_file(path, data)
    os.chmod(path, 0o644)


def platform_name() -> str:
    """``linux``, ``macos`` or Python's platform string."""
    return {"darwin": "macos"}.get(sys.platform, sys.platform)


def _bare_code(text: str) -> bool:
    """A code typed without its server (no ``@``, not a URL)."""
    return "@" not in text and ":" not in text


async def _pinned_fingerprint(invite: Invite) -> str | None:
    """The fingerprint to pin: the invite's, or the server's if the code's pin tag matches it."""
    if invite.tag is None or invite.code is None:
        return invite.fingerprint
    seen = invite.fingerprint or await server_fingerprint(invite.server_url, timeout=SERVER_TIMEOUT)
    if not hmac.compare_digest(pin_tag(invite.code, seen), invite.tag):
        raise ServerError(
            f"the certificate of {invite.server_url} does not match the code: check the code "
            "and the server (another server, or someone in between); nothing was sent",
            code="server-fingerprint-mismatch",
        )
    return seen


class DeviceState:
    """The device's key and, once paired, its certificate, trust anchor and server pin."""

    def __init__(
        self,
        paths: Paths,
        key: Ed25519PrivateKey,
        cert: x509.Certificate | None = None,
        trust: identity.TrustAnchor | None = None,
        server: ServerPin | None = None,
    ) -> None:
        self.paths = paths
        self.key = key
        self.device_id = identity.device_id_for(key.public_key())
        self.cert = cert
        self.trust = trust
        self.server = server
        self.server_reachable: bool | None = None
        self.server_error: str | None = None
        # The server refused us as revoked (before our CRL says so): we are revoked.
        self.revoked_by_server = False
        self._client: ServerClient | None = None
        self._lock = asyncio.Lock()
        # Called after the certificate, CRL or pairing changed (e.g. to publish an event).
        self.on_change: Callable[[str], None] | None = None

    # ------------------------------------------------------------ files

    @classmethod
    def load(cls, paths: Paths) -> DeviceState:
        """Load the device's files, making the key if there is none. Blocking."""
        return cls(paths, *_load_files(paths))

    def _save_pairing(
        self,
        cert: x509.Certificate,
        ca: x509.Certificate,
        crl: x509.CertificateRevocationList,
        server: ServerPin,
    ) -> None:
        _write_public(self.paths.account_ca, identity.cert_to_pem(ca))
        _write_public(self.paths.crl, identity.crl_to_pem(crl))
        identity.write_private_file(
            self.paths.server_json, json.dumps(server.to_json()).encode("utf-8")
        )
        _write_public(self.paths.device_cert, identity.cert_to_pem(cert))

    # ------------------------------------------------------------ views

    @property
    def paired(self) -> bool:
        """True once the device holds a certificate of an account."""
        return self.cert is not None and self.trust is not None and self.server is not None

    @property
    def account_id(self) -> str | None:
        """The account's id, if paired."""
        return None if self.trust is None else self.trust.account_id

    @property
    def cert_not_after(self) -> dt.datetime | None:
        """When the device certificate expires."""
        return None if self.cert is None else self.cert.not_valid_after_utc

    @property
    def revoked(self) -> bool:
        """True if the CRL held lists our own certificate, or the server refused us as revoked."""
        if self.cert is None or self.trust is None:
            return False
        if self.revoked_by_server:
            return True
        if self.trust.crl is None:
            return False
        return (
            self.trust.crl.get_revoked_certificate_by_serial_number(self.cert.serial_number)
            is not None
        )

    def needs_renewal(self, now: dt.datetime) -> bool:
        """True if the certificate expires within RENEW_BEFORE (10 days)."""
        not_after = self.cert_not_after
        return not_after is not None and not_after - now < RENEW_BEFORE

    def _changed(self, what: str) -> None:
        if self.on_change is not None:
            self.on_change(what)

    # ------------------------------------------------------------ server calls

    def client(self) -> ServerClient:
        """The server client as this device; ApiError(not-paired) before pairing."""
        if not self.paired or self.server is None:
            raise ApiError(
                "this device is not paired: pair it first", code="not-paired", status=409
            )
        if self._client is None:
            self._client = ServerClient(
                self.server.url,
                fingerprint=self.server.fingerprint,
                device_key=self.key,
                device_cert=self.cert,
                timeout=SERVER_TIMEOUT,
            )
        return self._client

    async def close(self) -> None:
        """Close the server client (idempotent)."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    def _note(self, exc: ServerError | None) -> None:
        """Record whether the server answered (a refusal is an answer)."""
        if exc is None:
            self.server_reachable, self.server_error = True, None
        elif exc.code == "device-revoked":
            self.server_reachable, self.server_error = True, exc.code
            self.note_revoked()
        else:
            self.server_reachable = exc.code not in ("server-unreachable", "server-bad-response")
            self.server_error = exc.code

    async def _call(self, make: Callable[[ServerClient], Any]) -> Any:
        try:
            result = await make(self.client())
        except ServerError as exc:
            self._note(exc)
            raise
        self._note(None)
        return result

    async def pair(
        self, invite_text: str, *, server: str | None, fingerprint: str | None, name: str
    ) -> None:
        """Join the invite's account; write the pairing files."""
        async with self._lock:
            if self.paired:
                raise ApiError(
                    "this device is already paired; it joins one account only",
                    code="already-paired",
                    status=409,
                )
            if server is None and fingerprint is None and _bare_code(invite_text):
                remembered = await asyncio.to_thread(self.last_server)
                if remembered is not None:
                    server, fingerprint = remembered.url, remembered.fingerprint
            try:
                invite = parse_invite(invite_text, server, fingerprint)
            except HandoffError as exc:
                raise ApiError(exc.message, code=exc.code, status=400) from None
            pin = ServerPin(invite.server_url, await _pinned_fingerprint(invite))
            async with ServerClient(pin.url, fingerprint=pin.fingerprint) as joiner:
                try:
                    result = await joiner.join(
                        invite, key=self.key, name=name, platform=platform_name()
                    )
                except ServerError as exc:
                    self._note(exc)
                    raise
            self._note(None)
            pin = ServerPin(pin.url, pin.fingerprint, result.account_name)
            await asyncio.to_thread(
                self._save_pairing, result.device_cert, result.account_ca, result.crl, pin
            )
            self.cert = result.device_cert
            self.trust = identity.TrustAnchor.from_ca(result.account_ca, result.crl)
            self.server = pin
            logger.info("paired account=%s device=%s", result.account_id, self.device_id)
        self._changed("paired")

    def note_revoked(self) -> None:
        """The server refused this device as revoked: stop using the account at once."""
        if self.paired and not self.revoked_by_server:
            self.revoked_by_server = True
            logger.warning("this device was revoked (the server said so)")
            self._changed("revoked")

    def last_server(self) -> ServerPin | None:
        """The server this device was paired with before ``unpair`` (blocking read), if any."""
        try:
            raw = (self.paths.identity_dir / LAST_SERVER).read_bytes()[:MAX_SERVER_JSON]
            return ServerPin.from_json(json.loads(raw))
        except (OSError, ValueError, HandoffError):
            return None

    def _forget_pairing(self) -> Ed25519PrivateKey:
        # device.crt first: without it the device is unpaired, whatever else is left.
        self.paths.device_cert.unlink(missing_ok=True)
        if self.paths.server_json.exists():
            os.replace(self.paths.server_json, self.paths.identity_dir / LAST_SERVER)
        for path in (self.paths.account_ca, self.paths.crl):
            path.unlink(missing_ok=True)
        # A new key, so a new device id: the old one is revoked, and stays so.
        key = identity.generate_device_key()
        identity.save_private_key(self.paths.device_key, key)
        return key

    async def unpair(self) -> bool:
        """Forget the account; True if the server revoked us first.

        The server is asked to revoke this device (best effort, unless it already
        is): an unpaired device should not stay listed as active in the account.
        The device gets a new key (a new id): a revoked id never comes back.
        """
        async with self._lock:
            if not self.paired:
                raise ApiError("this device is not paired", code="not-paired", status=409)
            at_server = self.revoked
            if not at_server:
                try:
                    async with asyncio.timeout(SERVER_TIMEOUT):
                        await self.client().revoke(self.device_id)
                    at_server = True
                except (ServerError, TimeoutError) as exc:
                    logger.info("self-revocation not done code=%s", getattr(exc, "code", "timeout"))
            await self.close()
            key = await asyncio.to_thread(self._forget_pairing)
            self.key, self.device_id = key, identity.device_id_for(key.public_key())
            self.cert, self.trust, self.server = None, None, None
            self.revoked_by_server = False
            self.server_reachable, self.server_error = None, None
            logger.info("unpaired device=%s revoked_at_server=%s", self.device_id, at_server)
        self._changed("unpaired")
        return at_server

    async def rename(self, name: str) -> None:
        """Tell the server this device's new name (peers list it)."""
        await self._call(lambda c: c.rename(self.device_id, name))

    async def create_invite(self) -> CreatedInvite:
        """A new invite to the account."""
        invite: CreatedInvite = await self._call(lambda c: c.create_invite())
        return invite

    async def devices(self) -> list[DeviceRecord]:
        """The account's devices as the server knows them."""
        devices: list[DeviceRecord] = await self._call(lambda c: c.devices())
        return devices

    async def revoke(self, device_id: str) -> None:
        """Revoke a device through the server; keep the new CRL."""
        crl = await self._call(lambda c: c.revoke(device_id))
        await self.accept_crl(crl)

    async def refresh_crl(self) -> bool:
        """Fetch the CRL; True if it was newer than ours (and is now kept)."""
        crl = await self._call(lambda c: c.fetch_crl())
        return await self.accept_crl(crl)

    async def accept_crl(self, crl: x509.CertificateRevocationList) -> bool:
        """Keep ``crl`` if it verifies and is newer (the gossip rule); True if kept."""
        if self.trust is None:
            return False
        updated = self.trust.with_crl(crl)
        if updated is self.trust:
            return False
        await asyncio.to_thread(_write_public, self.paths.crl, identity.crl_to_pem(crl))
        self.trust = updated
        logger.info("CRL updated number=%d", updated.crl_number)
        self._changed("crl")
        return True

    async def renew(self) -> None:
        """Get a fresh certificate for the same key and keep it."""
        cert: x509.Certificate = await self._call(lambda c: c.renew())
        await asyncio.to_thread(_write_public, self.paths.device_cert, identity.cert_to_pem(cert))
        self.cert = cert
        logger.info("certificate renewed not_after=%s", cert.not_valid_after_utc.isoformat())
        self._changed("cert")

    async def maintain(
        self, *, crl_interval: float = 3600.0, check_interval: float = 3600.0
    ) -> None:
        """Forever: renew the certificate when < 10 days are left; refresh the CRL periodically."""
        last_crl = 0.0
        while True:
            if self.paired and not self.revoked:
                now = time.time()
                try:
                    if self.needs_renewal(dt.datetime.now(dt.UTC)):
                        await self.renew()
                    if now - last_crl >= crl_interval:
                        await self.refresh_crl()
                        last_crl = now
                except ServerError as exc:
                    logger.info("server maintenance failed code=%s", exc.code)
            await asyncio.sleep(min(crl_interval, check_interval))


def _load_files(
    paths: Paths,
) -> tuple[
    Ed25519PrivateKey, x509.Certificate | None, identity.TrustAnchor | None, ServerPin | None
]:
    """The device key (made if there is none) and, when paired, its certificate, trust and
    server pin; ConfigError(identity-damaged) if the pairing files do not hold together."""
    if not paths.device_key.exists():
        paths.identity_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        identity.save_private_key(paths.device_key, identity.generate_device_key())
        logger.info("device key created path=%s", paths.device_key)
    key = identity.load_private_key(paths.device_key)
    if not paths.device_cert.exists():
        return key, None, None, None
    try:
        cert = identity.load_cert(paths.device_cert.read_bytes())
        ca = identity.load_cert(paths.account_ca.read_bytes())
        crl = identity.load_crl(paths.crl.read_bytes()) if paths.crl.exists() else None
        raw = paths.server_json.read_bytes()[:MAX_SERVER_JSON]
        server = ServerPin.from_json(json.loads(raw))
        trust = identity.TrustAnchor.from_ca(ca, crl)
    except (OSError, ValueError, HandoffError) as exc:
        raise ConfigError(
            f"the pairing files in {paths.identity_dir} are incomplete or damaged "
            f"({exc}); move device.crt away to pair again",
            code="identity-damaged",
        ) from exc
    if identity.cert_device_id(cert) != identity.device_id_for(key.public_key()):
        raise ConfigError(
            f"{paths.device_cert} is not for this device's key", code="identity-damaged"
        )
    return key, cert, trust, server
