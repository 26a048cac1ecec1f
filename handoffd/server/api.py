"""The JSON API under ``/v1``: info, join, invites, devices, CRL, renew, ICE servers (the WebSocket is in hub.py).

Device requests carry a signature by the device key (see auth.py); the device
is looked up server-side, so a revoked device is refused at once. Store calls
run in worker threads (SQLite and signing stay off the event loop).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web

from handoffd import __version__, identity
from handoffd.errors import IdentityError, ServerError
from handoffd.server import pairing, ratelimit
from handoffd.server.keys import CONFIG, HUB, JOIN_LIMITER, STORE, VERIFIER, error_response
from handoffd.server.relay import RELAY
from handoffd.server.store import Device, Issued
from handoffd.text import has_non_utf8
from handoffd.wire import auth

logger = logging.getLogger("handoffd.server.api")

API_VERSION = 1
LAST_SEEN_INTERVAL = 60.0
_INVITE_FAILURES = frozenset({"invite-unknown", "invite-used", "invite-expired", "invite-locked"})


def json_response(data: Any, status: int = 200) -> web.Response:
    """A compact JSON response."""
    return web.json_response(
        data, status=status, dumps=lambda d: json.dumps(d, separators=(",", ":"))
    )


def _bad(message: str, code: str = "bad-request", status: int = 400) -> ServerError:
    return ServerError(message, code=code, status=status)


async def read_json(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object of UTF-8 text (size bounded by ``client_max_size``); else ServerError."""
    body = await request.read()
    if not body:
        return {}
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise _bad("body is not JSON", "body-malformed") from None
    if not isinstance(data, dict):
        raise _bad("body must be a JSON object", "body-malformed")
    # A "\ud800" escape is valid JSON but no UTF-8 text: refused here, for every field.
    if has_non_utf8(data):
        raise _bad("body holds a string that is not UTF-8 (a lone surrogate)", "not-utf8")
    return data


def _str_field(
    data: dict[str, Any], key: str, *, max_len: int, required: bool = True
) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise _bad(f"field {key!r} must be a string of at most {max_len} characters")
    return value


def _now(request: web.Request) -> float:
    return request.app[CONFIG].clock()


async def authenticate(request: web.Request, *, allow_expired: bool = False) -> Device:
    """The device that signed this request; ServerError (401/403) otherwise.

    ``allow_expired`` lets a device whose certificate lapsed (but is not
    revoked) renew it: the server's device record, not the certificate, is
    what it trusts.
    """
    signed = auth.parse_signature_headers(request.headers)
    body = await request.read()
    store = request.app[STORE]
    device = await asyncio.to_thread(store.get_device, signed.device_id)
    if device is None:
        raise ServerError("unknown device", code="auth-invalid", status=401)
    now = _now(request)
    request.app[VERIFIER].verify(
        signed,
        device.public_key,
        method=request.method,
        path_qs=request.raw_path,
        body=body,
        now=now,
    )
    if (bus := request.app[HUB].bus) is not None:  # bus: a nonce is used once on any instance
        await bus.claim_nonce(signed.device_id, signed.nonce, 2 * auth.REQUEST_WINDOW + 30)
    if device.revoked:
        raise ServerError("this device has been revoked", code="device-revoked", status=403)
    if not allow_expired and device.cert_not_after < now - identity.CLOCK_SKEW.total_seconds():
        raise ServerError(
            "this device's certificate has expired; renew it", code="cert-expired", status=401
        )
    if device.last_seen is None or now - device.last_seen > LAST_SEEN_INTERVAL:
        await asyncio.to_thread(store.touch_device, device.device_id)
    return device


def _issued_json(issued: Issued) -> dict[str, Any]:
    return {
        "device_id": issued.device_id,
        "account_id": issued.account_id,
        "device_cert": identity.cert_to_pem(issued.device_cert).decode("ascii"),
        "account_ca": identity.cert_to_pem(issued.account_ca).decode("ascii"),
        "crl": identity.crl_to_pem(issued.crl).decode("ascii"),
    }


def _device_json(device: Device, online: frozenset[str]) -> dict[str, Any]:
    return {
        "device_id": device.device_id,
        "name": device.name,
        "platform": device.platform,
        "revoked": device.revoked,
        "created_at": device.created_at,
        "last_seen": device.last_seen,
        "online": device.device_id in online,
    }


def public_url(request: web.Request) -> str:
    """The server's URL for invites: configured, else as this request reached us."""
    configured = request.app[CONFIG].public_url
    return configured if configured else f"{request.scheme}://{request.host}"


# ---------------------------------------------------------------- handlers


async def info(request: web.Request) -> web.Response:
    """``GET /v1/info``."""
    return json_response(
        {
            "name": "handoff-server",
            "version": __version__,
            "api": API_VERSION,
            "fingerprint": request.app[CONFIG].fingerprint,
            "time": _now(request),
            "ice": request.app[CONFIG].ice.configured,
        }
    )


async def join(request: web.Request) -> web.Response:
    """``POST /v1/join``: ``{token | code, csr, name, platform}`` → certificates."""
    client = ratelimit.client_address(request)
    key = ratelimit.limit_key(client)
    limiter = request.app[JOIN_LIMITER]
    # The token is taken before the work and given back on success: concurrent guesses
    # cannot all pass a check made before any of them is counted (issue #16).
    if await limiter.acquire(key, _now(request)):
        raise ServerError(
            "too many failed join attempts; wait a minute", code="rate-limited", status=429
        )
    counted = False
    try:
        issued = await _join(request)
    except ServerError as exc:
        counted = exc.code in _INVITE_FAILURES
        logger.info("join refused code=%s client=%s", exc.code, client)
        raise
    finally:
        if not counted:
            await limiter.give_back(key, _now(request))
    logger.info(
        "device joined account=%s device=%s client=%s", issued.account_id, issued.device_id, client
    )
    account = await asyncio.to_thread(request.app[STORE].get_account, issued.account_id)
    body = _issued_json(issued)
    if account is not None:
        body["account_name"] = account.name  # shown by the device (`handoff status`)
    return json_response(body, status=201)


async def _join(request: web.Request) -> Issued:
    data = await read_json(request)
    token = _str_field(data, "token", max_len=256, required=False)
    code = _str_field(data, "code", max_len=64, required=False)
    csr = _str_field(data, "csr", max_len=identity.MAX_PEM)
    name = data.get("name")
    platform = data.get("platform")
    if not isinstance(name, str) or not isinstance(platform, str):
        raise _bad("fields 'name' and 'platform' must be strings")
    return await asyncio.to_thread(
        request.app[STORE].join,
        token=token,
        code=code,
        csr_pem=(csr or "").encode("utf-8"),
        name=name,
        platform=platform,
    )


async def create_invite(request: web.Request) -> web.Response:
    """``POST /v1/invites`` (device): a new invite to the device's own account."""
    device = await authenticate(request)
    data = await read_json(request)
    requested = data.get("account_id")
    if requested is not None and requested != device.account_id:
        raise ServerError(
            "a device can only invite to its own account", code="account-mismatch", status=403
        )
    retry = await request.app[ratelimit.INVITE_LIMITS].take(
        device.account_id, device.device_id, _now(request)
    )
    if retry:
        logger.info("invite rate-limited account=%s by=%s", device.account_id, device.device_id)
        response = error_response(
            429, "invite-rate-limited", "too many invites made; wait, then try again"
        )
        response.headers["Retry-After"] = str(retry)
        return response
    config = request.app[CONFIG]
    invite = await asyncio.to_thread(
        request.app[STORE].create_invite,
        device.account_id,
        created_by=device.device_id,
        ttl=config.invite_ttl,
    )
    view = pairing.present(
        public_url(request), config.fingerprint, invite.secrets, invite.expires_at
    )
    logger.info("invite created account=%s by=%s", device.account_id, device.device_id)
    return json_response(
        {
            "url": view.url,
            "page_url": view.page_url,
            "code": view.code,
            "expires_at": view.expires_at,
            "qr_svg": view.qr_svg,
        },
        status=201,
    )


async def list_devices(request: web.Request) -> web.Response:
    """``GET /v1/devices`` (device): the account's devices."""
    device = await authenticate(request)
    devices = await asyncio.to_thread(request.app[STORE].list_devices, device.account_id)
    online = await request.app[HUB].online_now(device.account_id)
    return json_response({"devices": [_device_json(d, online) for d in devices]})


def _target(request: web.Request) -> str:
    try:
        return identity.parse_device_id(request.match_info["device_id"])
    except IdentityError:
        raise ServerError(
            "no such device in this account", code="device-unknown", status=404
        ) from None


async def rename_device(request: web.Request) -> web.Response:
    """``PATCH /v1/devices/{id}`` (device): ``{name}``."""
    device = await authenticate(request)
    target = _target(request)
    data = await read_json(request)
    name = data.get("name")
    if not isinstance(name, str):
        raise _bad("field 'name' must be a string")
    store = request.app[STORE]
    renamed = await asyncio.to_thread(store.rename_device, device.account_id, target, name)
    online = request.app[HUB].online(device.account_id)
    return json_response({"device": _device_json(renamed, online)})


async def revoke_device(request: web.Request) -> web.Response:
    """``DELETE /v1/devices/{id}`` (device): revoke; returns the new CRL."""
    device = await authenticate(request)
    target = _target(request)
    crl = await asyncio.to_thread(request.app[STORE].revoke_device, device.account_id, target)
    await request.app[HUB].disconnect_revoked([target])
    logger.info(
        "device revoked account=%s device=%s by=%s", device.account_id, target, device.device_id
    )
    return json_response(
        {"crl": identity.crl_to_pem(crl).decode("ascii"), "crl_number": identity.crl_number(crl)}
    )


async def get_crl(request: web.Request) -> web.Response:
    """``GET /v1/crl?account=<id>[&format=der]``: the account's CRL (public; it is signed)."""
    account_id = request.query.get("account", "")
    if not identity.is_account_id(account_id):
        raise _bad("query parameter 'account' must be an account id", "bad-account-id")
    fmt = request.query.get("format", "pem")
    if fmt not in ("pem", "der"):
        raise _bad("format must be pem or der")
    crl = await asyncio.to_thread(request.app[STORE].current_crl, account_id)
    if fmt == "der":
        return web.Response(body=identity.crl_to_der(crl), content_type="application/pkix-crl")
    return web.Response(body=identity.crl_to_pem(crl), content_type="application/x-pem-file")


async def renew(request: web.Request) -> web.Response:
    """``POST /v1/renew`` (device): ``{csr}`` for the same key → a new certificate."""
    device = await authenticate(request, allow_expired=True)
    data = await read_json(request)
    csr = _str_field(data, "csr", max_len=identity.MAX_PEM) or ""
    issued = await asyncio.to_thread(
        request.app[STORE].renew, device.device_id, csr.encode("utf-8")
    )
    logger.info("device renewed account=%s device=%s", device.account_id, device.device_id)
    return json_response(_issued_json(issued))


async def ice_servers(request: web.Request) -> web.Response:
    """``GET /v1/ice`` (device): STUN/TURN servers, TURN credentials for this device (see ice.py)."""
    device = await authenticate(request)
    ice = request.app[CONFIG].ice
    servers = ice.servers_for(device.device_id, now=_now(request))
    if ice.turn:
        logger.info(
            "turn credentials issued account=%s device=%s ttl=%d",
            device.account_id,
            device.device_id,
            ice.ttl,
        )
    return json_response({"ice_servers": servers, "ttl": ice.ttl})


async def relay_stats(request: web.Request) -> web.Response:
    """``GET /v1/relays`` (device): the caller's account's relay sessions."""
    device = await authenticate(request)
    return json_response(request.app[RELAY].stats(device.account_id))


def setup_api(app: web.Application) -> None:
    """Add the ``/v1`` routes (the WebSocket route is added by the hub)."""
    app[ratelimit.INVITE_LIMITS] = ratelimit.InviteLimits.made_by(
        ratelimit.limiter_factory(app), app[CONFIG].invites_per_minute
    )
    app.router.add_get("/v1/info", info)
    app.router.add_post("/v1/join", join)
    app.router.add_post("/v1/invites", create_invite)
    app.router.add_get("/v1/devices", list_devices)
    app.router.add_patch("/v1/devices/{device_id}", rename_device)
    app.router.add_delete("/v1/devices/{device_id}", revoke_device)
    app.router.add_get("/v1/crl", get_crl)
    app.router.add_post("/v1/renew", renew)
    app.router.add_get("/v1/ice", ice_servers)
    app.router.add_get("/v1/relays", relay_stats)
