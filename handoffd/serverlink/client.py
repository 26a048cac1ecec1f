"""The device's client of handoff-server: join, renew, CRL, invites, devices, ICE, the WebSocket, relay.

Every error is a ``ServerError`` (a ``HandoffError``) with a stable ``code``:
the server's own code for a refused request (``invite-used``,
``device-revoked``, ...), or ``server-fingerprint-mismatch``,
``server-unreachable``, ``server-bad-response``, ``server-offline``,
``not-paired`` for what happens on this side.

Relay (docs/relay.md): ``ServerLink.open_relay`` asks for a relay session
(a ``RelayTicket``), the target learns of it through ``on_relay``, and each
side opens the byte stream with ``ServerClient.relay_stream``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from handoffd import identity
from handoffd.errors import HandoffError, ServerError
from handoffd.serverlink import records
from handoffd.serverlink.http import ServerHttp, field, pem_field
from handoffd.serverlink.records import CreatedInvite, DeviceRecord, IceServerInfo, JoinResult
from handoffd.serverlink.relaystream import RelayStream, join_relay
from handoffd.serverlink.session import ServerLink
from handoffd.wire.invite import Invite
from handoffd.wire.messages import RelayTicket, bad_response

__all__ = ["ServerClient"]


class ServerClient:
    """HTTP client of one handoff-server, optionally as a paired device (signed requests)."""

    def __init__(
        self,
        server_url: str,
        *,
        fingerprint: str | None,
        device_key: Ed25519PrivateKey | None = None,
        device_cert: x509.Certificate | None = None,
        timeout: float = 10.0,
    ) -> None:
        self._http = ServerHttp(server_url, fingerprint=fingerprint, timeout=timeout)
        self._key = device_key
        self._cert = device_cert

    @property
    def server_url(self) -> str:
        """The server's base URL (no trailing slash)."""
        return self._http.url

    @property
    def device_cert(self) -> x509.Certificate | None:
        """The device certificate in use (updated by ``renew``)."""
        return self._cert

    async def close(self) -> None:
        """Close the HTTP session (idempotent)."""
        await self._http.close()

    async def __aenter__(self) -> ServerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _require_device(self) -> tuple[Ed25519PrivateKey, x509.Certificate]:
        if self._key is None or self._cert is None:
            raise ServerError("this device is not paired", code="not-paired")
        return self._key, self._cert

    async def _signed(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        key, _ = self._require_device()
        return await self._http.request(method, path, body=body, signer=key)

    # ------------------------------------------------------------ account

    async def info(self) -> dict[str, Any]:
        """``GET /v1/info``: name, version, api, fingerprint (as the server sees itself), time."""
        result = await self._http.request("GET", "/v1/info")
        if not isinstance(result, dict):
            raise bad_response("info")
        return result

    async def join(
        self, invite: Invite, *, key: Ed25519PrivateKey, name: str, platform: str
    ) -> JoinResult:
        """Join the invite's account with ``key``; check what comes back before returning it."""
        if invite.server_url != self._http.url:
            raise ServerError("the invite is for another server", code="invite-wrong-server")
        body: dict[str, Any] = {
            "csr": identity.csr_to_pem(identity.make_csr(key)).decode("ascii"),
            "name": name,
            "platform": platform,
        }
        if invite.token is not None:
            body["token"] = invite.token
        elif invite.code is not None:
            body["code"] = invite.code
        else:
            raise ServerError("invite has neither token nor code", code="invite-malformed")
        result = await self._http.request("POST", "/v1/join", body=body)
        joined = records.check_join(result, key, now=dt.datetime.now(dt.UTC))
        self._key, self._cert = key, joined.device_cert
        return joined

    async def renew(self) -> x509.Certificate:
        """A new certificate for the same key (``POST /v1/renew``); also kept for later requests."""
        key, old = self._require_device()
        body = {"csr": identity.csr_to_pem(identity.make_csr(key)).decode("ascii")}
        result = await self._signed("POST", "/v1/renew", body)
        self._cert = records.check_renewal(result, key, old, now=dt.datetime.now(dt.UTC))
        return self._cert

    async def fetch_crl(self, account_id: str | None = None) -> x509.CertificateRevocationList:
        """The account's current CRL (``GET /v1/crl``); the caller verifies it (TrustAnchor.with_crl)."""
        if account_id is None:
            _, cert = self._require_device()
            account_id = records.cert_account(cert)
        if not identity.is_account_id(account_id):
            raise ServerError("not an account id", code="bad-account-id")
        query = urllib.parse.urlencode({"account": account_id})
        payload = await self._http.request("GET", f"/v1/crl?{query}", raw=True)
        try:
            return identity.load_crl(payload)
        except HandoffError:
            raise bad_response("CRL") from None

    async def create_invite(self) -> CreatedInvite:
        """A new invite to this device's account (``POST /v1/invites``)."""
        return records.created_invite(await self._signed("POST", "/v1/invites", {}))

    async def devices(self) -> list[DeviceRecord]:
        """The account's devices (``GET /v1/devices``)."""
        items = field(await self._signed("GET", "/v1/devices"), "devices", list)
        return [records.device_record(item) for item in items]

    async def rename(self, device_id: str, name: str) -> DeviceRecord:
        """Rename a device of the account (``PATCH /v1/devices/{id}``)."""
        device_id = identity.parse_device_id(device_id)
        result = await self._signed("PATCH", f"/v1/devices/{device_id}", {"name": name})
        return records.device_record(field(result, "device", dict))

    async def revoke(self, device_id: str) -> x509.CertificateRevocationList:
        """Revoke a device of the account (``DELETE /v1/devices/{id}``); return the new CRL."""
        device_id = identity.parse_device_id(device_id)
        result = await self._signed("DELETE", f"/v1/devices/{device_id}")
        try:
            return identity.load_crl(pem_field(result, "crl"))
        except HandoffError:
            raise bad_response("CRL") from None

    # ------------------------------------------------------------ paths to peers

    def connect(
        self,
        on_presence: Callable[[frozenset[str]], None],
        on_signal: Callable[[str, bytes], None],
        *,
        on_error: Callable[[ServerError], None] | None = None,
        on_relay: Callable[[RelayTicket], None] | None = None,
    ) -> ServerLink:
        """The device's WebSocket (not yet started: ``await link.start()``).

        ``on_relay`` gets the relay sessions other devices open to this one
        (join with ``relay_stream``, or decline with ``ServerLink.close_relay``).
        """
        key, _ = self._require_device()
        return ServerLink(self._http, key, on_presence, on_signal, on_error, on_relay)

    async def ice_servers(self) -> tuple[tuple[IceServerInfo, ...], float]:
        """``GET /v1/ice``: the STUN/TURN servers to use and when their credentials expire (Unix s).

        The expiry is this machine's clock at the request plus the server's
        TTL; ask again before it (at half the TTL, say). The answer is checked
        strictly (at most 8 servers of 1 to 4 ``stun:``/``turn:``/``turns:``
        URLs, bounded credentials): ``server-bad-response`` otherwise.
        """
        started = time.time()
        return records.ice_servers(await self._signed("GET", "/v1/ice"), asked_at=started)

    async def relays(self) -> dict[str, int]:
        """``GET /v1/relays``: the account's relay sessions ``{pending, active, opened}``."""
        result = await self._signed("GET", "/v1/relays")
        return {k: int(field(result, k, int)) for k in ("pending", "active", "opened")}

    async def relay_stream(
        self, ticket: RelayTicket, *, deadline: float | None = None
    ) -> RelayStream:
        """Join ``ticket``'s session on ``/v1/relay``; returns once both sides are in.

        ServerError with the server's code (``relay-unknown``, ``relay-forbidden``,
        ``relay-token-used``, ``relay-peer-absent``, ...), or ``server-*``.
        """
        key, _ = self._require_device()
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + self._http.timeout
        return await join_relay(self._http, key, ticket, deadline=deadline)
