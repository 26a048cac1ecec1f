"""The daemon's client of handoff-server: join, renew, CRL, invites, devices, and the WebSocket.

aiohttp is used here only (daemon side). TLS: for an ``https`` URL with a
pinned fingerprint (``sha256:<hex>`` from the invite / server.json) the server
certificate is checked by that fingerprint and nothing else (it is
self-signed); a mismatch fails right after the TLS handshake, before any
request byte is sent. An ``https`` URL without a pin (a server behind a TLS
proxy with a public certificate) uses the system's CA verification. ``http``
only when the URL says so (tests, a proxy on the same host).

Every error is a ``ServerError`` (a ``HandoffError``) with a stable ``code``:
the server's own code for a refused request (``invite-used``,
``device-revoked``, ...), or ``server-fingerprint-mismatch``,
``server-unreachable``, ``server-bad-response``, ``server-offline``,
``not-paired`` for what happens on this side.

Relay (docs/relay.md): ``ServerLink.open_relay`` asks for a relay session
(a ``RelayTicket``), the target learns of it through ``on_relay``, and each
side opens the byte stream with ``ServerClient.relay_stream`` (a dedicated
WebSocket per stream, so a big transfer never blocks presence or signaling).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import yarl
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from handoffd import backoff, identity
from handoffd.errors import HandoffError, ServerError
from handoffd.server import auth
from handoffd.server.ice import check_ice_response
from handoffd.server.pairing import Invite, check_fingerprint, check_server_url, parse_invite

__all__ = [
    "CreatedInvite",
    "DeviceRecord",
    "IceServerInfo",
    "Invite",
    "JoinResult",
    "RelayStream",
    "RelayTicket",
    "ServerClient",
    "ServerLink",
    "parse_invite",
]

logger = logging.getLogger("handoffd.serverclient")

MAX_RESPONSE = 1024 * 1024
MAX_WS_MESSAGE = 512 * 1024
MAX_SIGNAL = 256 * 1024
MAX_RELAY_FRAME = 128 * 1024
HEARTBEAT = 20.0
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
# After these the link stops reconnecting: retrying cannot help.
FATAL_CODES = frozenset(
    {
        "device-revoked",
        "auth-invalid",
        "device-unknown",
        "cert-expired",
        "server-fingerprint-mismatch",
    }
)


@dataclass(frozen=True)
class JoinResult:
    """What a successful join gives the new device."""

    device_id: str
    account_id: str
    device_cert: x509.Certificate
    account_ca: x509.Certificate
    crl: x509.CertificateRevocationList


@dataclass(frozen=True)
class CreatedInvite:
    """An invite made by this device: URL (for the QR), short code, expiry (Unix s), QR as SVG."""

    url: str
    code: str
    expires_at: float
    qr_svg: str


@dataclass(frozen=True)
class DeviceRecord:
    """One device of the account as the server knows it."""

    device_id: str
    name: str
    platform: str
    revoked: bool
    created_at: float
    last_seen: float | None
    online: bool


@dataclass(frozen=True)
class IceServerInfo:
    """A STUN or TURN server the server advertises (TURN: time-limited credentials)."""

    urls: tuple[str, ...]
    username: str | None
    credential: str | None


@dataclass(frozen=True)
class RelayTicket:
    """A relay session this device may join once: ``peer`` is the other device."""

    session: str
    token: str
    peer: str
    expires_in: float
    initiator: bool


def _bad_response(what: str) -> ServerError:
    return ServerError(f"server sent a malformed {what}", code="server-bad-response")


def _field(obj: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(obj, dict) or not isinstance(obj.get(key), kind):
        raise _bad_response(f"response (field {key})")
    return obj[key]


def _pem_field(obj: Any, key: str) -> bytes:
    return str(_field(obj, key, str)).encode("ascii", "replace")


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
        try:
            self._url = check_server_url(server_url)
            self._fingerprint = check_fingerprint(fingerprint) if fingerprint else None
        except HandoffError as exc:
            raise ServerError(exc.message, code="server-url-invalid") from None
        self._ssl: aiohttp.Fingerprint | bool = True
        if self._url.startswith("https:") and self._fingerprint:
            self._ssl = aiohttp.Fingerprint(bytes.fromhex(self._fingerprint[len("sha256:") :]))
        self._key = device_key
        self._cert = device_cert
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    @property
    def server_url(self) -> str:
        """The server's base URL (no trailing slash)."""
        return self._url

    @property
    def device_cert(self) -> x509.Certificate | None:
        """The device certificate in use (updated by ``renew``)."""
        return self._cert

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ServerError("client is closed", code="client-closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                headers={"User-Agent": "handoffd"},
            )
        return self._session

    async def close(self) -> None:
        """Close the HTTP session (idempotent)."""
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
            # aiohttp's graceful-shutdown note: TLS transports finish closing a few
            # loop iterations later; without this they leak if the loop ends now.
            await asyncio.sleep(0.02)

    async def __aenter__(self) -> ServerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------ plumbing

    def _require_device(self) -> tuple[Ed25519PrivateKey, x509.Certificate]:
        if self._key is None or self._cert is None:
            raise ServerError("this device is not paired", code="not-paired")
        return self._key, self._cert

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        signed: bool = False,
        raw: bool = False,
    ) -> Any:
        """One request; JSON (or raw bytes) back; ServerError for every failure."""
        data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode("utf-8")
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if signed:
            key, _ = self._require_device()
            headers.update(auth.sign_request(key, method, path, data, now=time.time()))
        url = yarl.URL(self._url + path, encoded=True)
        session = self._get_session()
        try:
            async with session.request(
                method, url, data=data or None, headers=headers, ssl=self._ssl
            ) as resp:
                payload = await _read_bounded(resp)
                if resp.status >= 400:
                    raise _error_from(resp.status, payload)
        except aiohttp.ServerFingerprintMismatch:
            raise ServerError(
                "the server's TLS certificate does not match the pinned fingerprint",
                code="server-fingerprint-mismatch",
            ) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ServerError(
                f"cannot reach {self._url}: {type(exc).__name__}", code="server-unreachable"
            ) from exc
        if raw:
            return payload
        try:
            return json.loads(payload)
        except ValueError:
            raise _bad_response("JSON body") from None

    # ------------------------------------------------------------ API

    async def info(self) -> dict[str, Any]:
        """``GET /v1/info``: name, version, api, fingerprint (as the server sees itself), time."""
        result = await self._request("GET", "/v1/info")
        if not isinstance(result, dict):
            raise _bad_response("info")
        return result

    async def join(
        self, invite: Invite, *, key: Ed25519PrivateKey, name: str, platform: str
    ) -> JoinResult:
        """Join the invite's account with ``key``; check what comes back before returning it."""
        if invite.server_url != self._url:
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
        result = await self._request("POST", "/v1/join", body=body)
        try:
            cert = identity.load_cert(_pem_field(result, "device_cert"))
            ca = identity.load_cert(_pem_field(result, "account_ca"))
            crl = identity.load_crl(_pem_field(result, "crl"))
        except HandoffError as exc:
            raise _bad_response(f"join result ({exc.code})") from None
        now = dt.datetime.now(dt.UTC)
        account_id = identity.check_account_ca(ca, now=now)
        trust = identity.TrustAnchor.from_ca(ca, crl)
        own_id = identity.device_id_for(key.public_key())
        peer = identity.verify_device_cert(cert, trust, now=now, expected_device=own_id)
        if _field(result, "device_id", str) != own_id or _field(result, "account_id", str) != (
            account_id
        ):
            raise _bad_response("join result (ids)")
        self._key, self._cert = key, cert
        return JoinResult(
            device_id=peer.device_id,
            account_id=account_id,
            device_cert=cert,
            account_ca=ca,
            crl=crl,
        )

    async def renew(self) -> x509.Certificate:
        """A new certificate for the same key (``POST /v1/renew``); also kept for later requests."""
        key, old = self._require_device()
        body = {"csr": identity.csr_to_pem(identity.make_csr(key)).decode("ascii")}
        result = await self._request("POST", "/v1/renew", body=body, signed=True)
        try:
            cert = identity.load_cert(_pem_field(result, "device_cert"))
            ca = identity.load_cert(_pem_field(result, "account_ca"))
        except HandoffError as exc:
            raise _bad_response(f"renew result ({exc.code})") from None
        if ca.subject != old.issuer:
            raise _bad_response("renew result (another account)")
        trust = identity.TrustAnchor.from_ca(ca)
        identity.verify_device_cert(
            cert,
            trust,
            now=dt.datetime.now(dt.UTC),
            expected_device=identity.device_id_for(key.public_key()),
        )
        self._cert = cert
        return cert

    async def fetch_crl(self, account_id: str | None = None) -> x509.CertificateRevocationList:
        """The account's current CRL (``GET /v1/crl``); the caller verifies it (TrustAnchor.with_crl)."""
        if account_id is None:
            _, cert = self._require_device()
            account_id = _cert_account(cert)
        if not identity.is_account_id(account_id):
            raise ServerError("not an account id", code="bad-account-id")
        query = urllib.parse.urlencode({"account": account_id})
        payload = await self._request("GET", f"/v1/crl?{query}", raw=True)
        try:
            return identity.load_crl(payload)
        except HandoffError:
            raise _bad_response("CRL") from None

    async def create_invite(self) -> CreatedInvite:
        """A new invite to this device's account (``POST /v1/invites``)."""
        result = await self._request("POST", "/v1/invites", body={}, signed=True)
        expires = _field(result, "expires_at", (int, float))
        return CreatedInvite(
            url=_field(result, "url", str),
            code=_field(result, "code", str),
            expires_at=float(expires),
            qr_svg=_field(result, "qr_svg", str),
        )

    async def devices(self) -> list[DeviceRecord]:
        """The account's devices (``GET /v1/devices``)."""
        result = await self._request("GET", "/v1/devices", signed=True)
        items = _field(result, "devices", list)
        return [_device_record(item) for item in items]

    async def rename(self, device_id: str, name: str) -> DeviceRecord:
        """Rename a device of the account (``PATCH /v1/devices/{id}``)."""
        device_id = identity.parse_device_id(device_id)
        result = await self._request(
            "PATCH", f"/v1/devices/{device_id}", body={"name": name}, signed=True
        )
        return _device_record(_field(result, "device", dict))

    async def revoke(self, device_id: str) -> x509.CertificateRevocationList:
        """Revoke a device of the account (``DELETE /v1/devices/{id}``); return the new CRL."""
        device_id = identity.parse_device_id(device_id)
        result = await self._request("DELETE", f"/v1/devices/{device_id}", signed=True)
        try:
            return identity.load_crl(_pem_field(result, "crl"))
        except HandoffError:
            raise _bad_response("CRL") from None

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
        return ServerLink(self, key, on_presence, on_signal, on_error, on_relay)

    async def ice_servers(self) -> tuple[tuple[IceServerInfo, ...], float]:
        """``GET /v1/ice``: the STUN/TURN servers to use and when their credentials expire (Unix s).

        The expiry is this machine's clock at the request plus the server's
        TTL; ask again before it (at half the TTL, say). The answer is checked
        strictly (at most 8 servers of 1 to 4 ``stun:``/``turn:``/``turns:``
        URLs, bounded credentials): ``server-bad-response`` otherwise.
        """
        started = time.time()
        result = await self._request("GET", "/v1/ice", signed=True)
        try:
            entries, ttl = check_ice_response(result)
        except ValueError as exc:
            raise _bad_response(f"ICE server list ({exc})") from None
        servers = tuple(IceServerInfo(e.urls, e.username, e.credential) for e in entries)
        return servers, started + ttl

    async def relays(self) -> dict[str, int]:
        """``GET /v1/relays``: the account's relay sessions ``{pending, active, opened}``."""
        result = await self._request("GET", "/v1/relays", signed=True)
        return {k: int(_field(result, k, int)) for k in ("pending", "active", "opened")}

    async def relay_stream(
        self, ticket: RelayTicket, *, deadline: float | None = None
    ) -> RelayStream:
        """Join ``ticket``'s session on ``/v1/relay``; returns once both sides are in.

        ServerError with the server's code (``relay-unknown``, ``relay-forbidden``,
        ``relay-token-used``, ``relay-peer-absent``, ...), or ``server-*``.
        """
        key, _ = self._require_device()
        device_id = identity.device_id_for(key.public_key())
        session = self._get_session()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout if deadline is None else deadline
        try:
            async with asyncio.timeout_at(deadline):
                ws = await session.ws_connect(
                    self._ws_url("/v1/relay"),
                    ssl=self._ssl,
                    heartbeat=None,
                    max_msg_size=MAX_RELAY_FRAME,
                    autoping=True,
                    compress=0,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
                )
        except aiohttp.ServerFingerprintMismatch:
            raise ServerError(
                "the server's TLS certificate does not match the pinned fingerprint",
                code="server-fingerprint-mismatch",
            ) from None
        except aiohttp.WSServerHandshakeError as exc:
            code = "rate-limited" if exc.status == 429 else "server-ws-refused"
            raise ServerError(f"relay refused with HTTP {exc.status}", code=code) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ServerError(
                f"cannot reach {self._url}: {type(exc).__name__}", code="server-unreachable"
            ) from exc
        except TimeoutError:
            raise ServerError("relay connect timed out", code="server-unreachable") from None
        stream = RelayStream(ws, ticket)
        try:
            async with asyncio.timeout_at(deadline):
                challenge_msg = await stream._control()
                if challenge_msg.get("type") != "challenge" or not isinstance(
                    challenge_msg.get("nonce"), str
                ):
                    raise _bad_response("relay challenge")
                try:
                    challenge = auth.b64d(challenge_msg["nonce"], max_len=64)
                except ValueError:
                    raise _bad_response("relay challenge") from None
                await ws.send_str(
                    json.dumps(
                        {
                            "type": "auth",
                            "device_id": device_id,
                            "signature": auth.sign_ws_challenge(key, challenge),
                            "session": ticket.session,
                            "token": ticket.token,
                        }
                    )
                )
                joined = await stream._control()
                if joined.get("type") != "relay-joined" or joined.get("peer") != ticket.peer:
                    raise _bad_response("relay join answer")
                started = await stream._control()
                if started.get("type") != "relay-start":
                    raise _bad_response("relay start")
        except TimeoutError:
            await stream.close()
            raise ServerError(
                "the relay session did not start in time", code="relay-timeout"
            ) from None
        except (aiohttp.ClientError, ConnectionError, OSError) as exc:
            await stream.close()
            raise ServerError("lost the relay connection", code="relay-lost") from exc
        except BaseException:
            await stream.close()
            raise
        return stream

    # for ServerLink
    def _ws_url(self, path: str = "/v1/ws") -> yarl.URL:
        base = (
            "wss" + self._url[len("https") :]
            if self._url.startswith("https:")
            else ("ws" + self._url[len("http") :])
        )
        return yarl.URL(base + path, encoded=True)


class RelayStream:
    """One side of a started relay session: opaque binary messages both ways.

    ``recv`` returns None once the stream ended; ``error`` then holds the
    server's reason (``relay-peer-closed``, ``relay-idle-timeout``,
    ``relay-byte-quota``, ...) or ``relay-lost``.
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, ticket: RelayTicket) -> None:
        self._ws = ws
        self.ticket = ticket
        self.error: ServerError | None = None
        self.stall_timeout = 60.0
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once the stream ended or was closed."""
        return self._closed or self._ws.closed

    async def _control(self) -> dict[str, Any]:
        """The next control message before the start (server errors raised)."""
        msg = await self._ws.receive()
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise self._ended(msg) or ServerError("relay closed", code="relay-lost")
        data = _json_object(msg.data, "relay message")
        if data.get("type") == "error":
            raise _server_error(data)
        return data

    def _ended(self, msg: aiohttp.WSMessage) -> ServerError | None:
        if msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSING,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.ERROR,
        ):
            self._closed = True
            if self.error is None:
                self.error = ServerError("the relay connection was lost", code="relay-lost")
            return self.error
        return None

    async def send(self, data: bytes) -> None:
        """Send one binary message (≤ 128 KiB); waits while the socket's buffer is full."""
        if len(data) > MAX_RELAY_FRAME:
            raise ServerError("relay frame is too large", code="relay-frame-too-large")
        if self.closed:
            raise self.error or ServerError("relay stream is closed", code="relay-lost")
        try:
            async with asyncio.timeout(self.stall_timeout):
                await self._ws.send_bytes(data)
        except TimeoutError:
            raise ServerError("the relay stopped taking data", code="relay-send-stalled") from None
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            self._closed = True
            raise self.error or ServerError(
                "the relay connection was lost", code="relay-lost"
            ) from exc

    async def recv(self) -> bytes | None:
        """The next binary message, or None once the stream ended (see ``error``)."""
        while True:
            msg = await self._ws.receive()
            if msg.type == aiohttp.WSMsgType.BINARY:
                data: bytes = msg.data
                return data
            if self._ended(msg) is not None:
                return None
            if msg.type == aiohttp.WSMsgType.TEXT:
                try:
                    data_obj = _json_object(msg.data, "relay message")
                except ServerError as exc:
                    self.error = exc
                    await self.close()
                    return None
                if data_obj.get("type") == "error":
                    self.error = _server_error(data_obj)

    async def close(self) -> None:
        """Close the WebSocket (idempotent)."""
        self._closed = True
        if not self._ws.closed:
            with contextlib.suppress(aiohttp.ClientError, ConnectionError, TimeoutError):
                async with asyncio.timeout(2):
                    await self._ws.close()


class ServerLink:
    """The device's WebSocket to the server: presence in, signals both ways; reconnects with backoff.

    ``online`` is the set of the account's online device ids (this device
    included) while connected, empty otherwise; ``on_presence`` is called on
    every change. ``on_signal(from_device, envelope)`` gets forwarded envelopes.
    ``on_error`` gets errors the server reports about our messages (e.g.
    ``target-unavailable``) and the fatal error that stops the link
    (``device-revoked``, ...), also kept in ``last_error``.
    """

    def __init__(
        self,
        client: ServerClient,
        key: Ed25519PrivateKey,
        on_presence: Callable[[frozenset[str]], None],
        on_signal: Callable[[str, bytes], None],
        on_error: Callable[[ServerError], None] | None,
        on_relay: Callable[[RelayTicket], None] | None = None,
    ) -> None:
        self._client = client
        self._key = key
        self._device_id = identity.device_id_for(key.public_key())
        self._on_presence = on_presence
        self._on_signal = on_signal
        self._on_error = on_error
        self._on_relay = on_relay
        self._pending: dict[str, asyncio.Future[RelayTicket]] = {}
        self._next_id = 0
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self.online: frozenset[str] = frozenset()
        self.last_error: ServerError | None = None

    @property
    def connected(self) -> bool:
        """True while authenticated on a live WebSocket."""
        return self._connected.is_set()

    async def start(self) -> None:
        """Start the connect/reconnect loop (returns at once; see wait_connected)."""
        if self._task is None and not self._closing:
            self._task = asyncio.create_task(self._run(), name="serverlink")

    async def wait_connected(self) -> None:
        """Wait until connected (wrap in ``asyncio.timeout``); raise the link's error if it stopped."""
        while not self._connected.is_set():
            task = self._task
            if task is None or task.done():
                raise self.last_error or ServerError(
                    "not connected to the server", code="server-offline"
                )
            waiter = asyncio.ensure_future(self._connected.wait())
            try:
                await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()

    async def send_signal(self, to_device: str, envelope: bytes) -> None:
        """Forward an opaque signed envelope to another online device of the account."""
        if len(envelope) > MAX_SIGNAL:
            raise ServerError("signal is too large", code="signal-too-large")
        await self._send({"type": "signal", "to": to_device, "data": auth.b64e(envelope)})

    async def open_relay(self, to_device: str, *, deadline: float | None = None) -> RelayTicket:
        """Ask the server for a relay session to ``to_device``; the ticket to join it.

        ServerError: ``target-unavailable``, ``relay-too-many``, ``rate-limited``,
        ``server-offline``, ``relay-timeout``.
        """
        to_device = identity.parse_device_id(to_device)
        self._next_id += 1
        ref = f"relay-{self._next_id}"
        future: asyncio.Future[RelayTicket] = asyncio.get_running_loop().create_future()
        self._pending[ref] = future
        try:
            await self._send({"type": "relay-open", "to": to_device, "id": ref})
            loop = asyncio.get_running_loop()
            async with asyncio.timeout_at(
                loop.time() + self._client._timeout if deadline is None else deadline
            ):
                return await future
        except TimeoutError:
            raise ServerError("no relay ticket in time", code="relay-timeout") from None
        finally:
            self._pending.pop(ref, None)

    async def close_relay(self, session: str) -> None:
        """Decline or abandon a relay session not joined (best effort, never raises ServerError)."""
        with contextlib.suppress(ServerError):
            await self._send({"type": "relay-close", "session": session})

    def _fail_pending(self, error: ServerError) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)

    async def _send(self, message: dict[str, Any]) -> None:
        ws = self._ws
        if ws is None or ws.closed or not self.connected:
            raise ServerError("not connected to the server", code="server-offline")
        try:
            async with asyncio.timeout(self._client._timeout):
                await ws.send_str(json.dumps(message, separators=(",", ":")))
        except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
            raise ServerError("lost the server connection", code="server-offline") from exc

    async def close(self) -> None:
        """Stop reconnecting and close the WebSocket (idempotent)."""
        self._closing = True
        ws = self._ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(aiohttp.ClientError, ConnectionError, TimeoutError):
                async with asyncio.timeout(2):
                    await ws.close()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # our own cancellation still goes through

    # ------------------------------------------------------------ the loop

    def _set_online(self, online: frozenset[str]) -> None:
        if online == self.online:
            return
        self.online = online
        try:
            self._on_presence(online)
        except Exception:
            logger.exception("presence callback failed")

    def _report(self, error: ServerError) -> None:
        if self._on_error is None:
            return
        try:
            self._on_error(error)
        except Exception:
            logger.exception("error callback failed")

    async def _run(self) -> None:
        failures = 0
        while not self._closing:
            started = time.monotonic()
            try:
                await self._session_once()
            except ServerError as exc:
                if exc.code in FATAL_CODES:
                    self.last_error = exc
                    logger.warning("server link stopped code=%s", exc.code)
                    self._report(exc)
                    self._connected.clear()
                    self._set_online(frozenset())
                    return
                self.last_error = exc
                logger.info("server link lost code=%s", exc.code)
            except (aiohttp.ClientError, ConnectionError, TimeoutError, OSError) as exc:
                self.last_error = ServerError(
                    f"server connection failed: {type(exc).__name__}", code="server-unreachable"
                )
                logger.info("server link lost error=%s", type(exc).__name__)
            finally:
                self._ws = None
                self._fail_pending(ServerError("lost the server connection", code="server-offline"))
            self._connected.clear()
            self._set_online(frozenset())
            if time.monotonic() - started > BACKOFF_MAX:
                failures = 0  # it had been up for a while: start again from the minimum
            failures += 1
            await asyncio.sleep(backoff.delay(failures, base=BACKOFF_MIN, cap=BACKOFF_MAX))

    async def _session_once(self) -> None:
        client = self._client
        session = client._get_session()
        try:
            async with asyncio.timeout(client._timeout):
                ws = await session.ws_connect(
                    client._ws_url(),
                    ssl=client._ssl,
                    heartbeat=HEARTBEAT,
                    max_msg_size=MAX_WS_MESSAGE,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                )
        except aiohttp.ServerFingerprintMismatch:
            raise ServerError(
                "the server's TLS certificate does not match the pinned fingerprint",
                code="server-fingerprint-mismatch",
            ) from None
        except aiohttp.WSServerHandshakeError as exc:
            raise ServerError(
                f"WebSocket refused with HTTP {exc.status}", code="server-ws-refused"
            ) from None
        self._ws = ws
        try:
            async with asyncio.timeout(client._timeout):
                challenge_msg = await self._receive(ws)
                if challenge_msg.get("type") != "challenge" or not isinstance(
                    challenge_msg.get("nonce"), str
                ):
                    raise _bad_response("WebSocket challenge")
                try:
                    challenge = auth.b64d(challenge_msg["nonce"], max_len=64)
                except ValueError:
                    raise _bad_response("WebSocket challenge") from None
                await ws.send_str(
                    json.dumps(
                        {
                            "type": "auth",
                            "device_id": self._device_id,
                            "signature": auth.sign_ws_challenge(self._key, challenge),
                        }
                    )
                )
                welcome = await self._receive(ws)
                if welcome.get("type") != "welcome":
                    raise _bad_response("WebSocket welcome")
            self._connected.set()
            self._handle(welcome)
            while True:
                self._handle(await self._receive(ws))
        finally:
            self._connected.clear()
            with contextlib.suppress(aiohttp.ClientError, ConnectionError, TimeoutError):
                async with asyncio.timeout(2):
                    await ws.close()

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
        msg = await ws.receive()
        if msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSING,
            aiohttp.WSMsgType.CLOSED,
        ):
            raise ServerError("server closed the WebSocket", code="server-closed")
        if msg.type == aiohttp.WSMsgType.ERROR:
            raise ServerError("WebSocket error", code="server-closed")
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise _bad_response("WebSocket frame")
        try:
            data = json.loads(msg.data)
        except ValueError:
            raise _bad_response("WebSocket message") from None
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            raise _bad_response("WebSocket message")
        if data["type"] == "error":
            error = data.get("error")
            code = error.get("code") if isinstance(error, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            exc = ServerError(str(message or "server error")[:300], code=str(code or "server")[:64])
            if exc.code in FATAL_CODES or data.get("fatal") is True:
                raise exc
            future = self._pending.get(data["ref"]) if isinstance(data.get("ref"), str) else None
            if future is not None:
                if not future.done():
                    future.set_exception(exc)
            else:
                self._report(exc)
        return data

    def _handle(self, data: dict[str, Any]) -> None:
        kind = data["type"]
        if kind in ("welcome", "presence"):
            online = data.get("online")
            if isinstance(online, list) and all(isinstance(d, str) for d in online):
                self._set_online(frozenset(online))
        elif kind == "signal":
            sender, payload = data.get("from"), data.get("data")
            if not isinstance(sender, str) or not isinstance(payload, str):
                logger.warning("malformed signal from server")
                return
            try:
                envelope = auth.b64d(payload, max_len=MAX_SIGNAL)
            except ValueError:
                logger.warning("malformed signal from server")
                return
            try:
                self._on_signal(sender, envelope)
            except Exception:
                logger.exception("signal callback failed")
        elif kind in ("relay-ticket", "relay-offer"):
            self._relay_message(data)
        # "pong", "error" (reported in _receive) and unknown types are ignored.

    def _relay_message(self, data: dict[str, Any]) -> None:
        session, token, expires = data.get("session"), data.get("token"), data.get("expires_in")
        initiator = data["type"] == "relay-ticket"
        peer = data.get("to" if initiator else "from")
        if not (
            isinstance(session, str)
            and 0 < len(session) <= 64
            and isinstance(token, str)
            and 0 < len(token) <= 128
            and isinstance(peer, str)
            and identity.is_device_id(peer)
            and isinstance(expires, (int, float))
        ):
            logger.warning("malformed relay message from server")
            return
        ticket = RelayTicket(session, token, peer, float(expires), initiator)
        if initiator:
            ref = data.get("id")
            future = self._pending.get(ref) if isinstance(ref, str) else None
            if future is not None and not future.done():
                future.set_result(ticket)
            return
        if self._on_relay is None:
            return
        try:
            self._on_relay(ticket)
        except Exception:
            logger.exception("relay callback failed")


async def _read_bounded(resp: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_RESPONSE:
            raise _bad_response("response (too large)")
        chunks.append(chunk)
    return b"".join(chunks)


def _error_from(status: int, payload: bytes) -> ServerError:
    try:
        error = json.loads(payload)["error"]
        code, message = str(error["code"])[:64], str(error["message"])[:300]
    except (ValueError, KeyError, TypeError):
        return ServerError(
            f"server answered HTTP {status}", code="server-bad-response", status=status
        )
    return ServerError(message, code=code, status=status)


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        raise _bad_response(what) from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise _bad_response(what)
    return data


def _server_error(data: dict[str, Any]) -> ServerError:
    error = data.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return ServerError(str(message or "server error")[:300], code=str(code or "server")[:64])


def _device_record(item: Any) -> DeviceRecord:
    last_seen = item.get("last_seen") if isinstance(item, dict) else None
    if last_seen is not None and not isinstance(last_seen, (int, float)):
        raise _bad_response("device record")
    return DeviceRecord(
        device_id=_field(item, "device_id", str),
        name=_field(item, "name", str),
        platform=_field(item, "platform", str),
        revoked=_field(item, "revoked", bool),
        created_at=float(_field(item, "created_at", (int, float))),
        last_seen=None if last_seen is None else float(last_seen),
        online=_field(item, "online", bool),
    )


def _cert_account(cert: x509.Certificate) -> str:
    try:
        return identity.ca_account_id(cert)  # reads the one account URN, of any certificate
    except HandoffError:
        raise ServerError("device certificate names no account", code="not-paired") from None
