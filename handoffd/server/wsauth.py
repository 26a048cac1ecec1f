"""The hub's socket-level helpers: send, close and read one frame, and the device auth handshake.

Used by ``handoffd.server.hub`` (``/v1/ws``) and, through ``Hub.verify_device``,
by ``/v1/relay``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from handoffd import identity
from handoffd.errors import ServerError
from handoffd.server.store import Device, Store
from handoffd.server.wsconn import FrameError, error_frame
from handoffd.wire import auth

logger = logging.getLogger("handoffd.server.hub")

AUTH_TIMEOUT = 10.0
SEND_TIMEOUT = 10.0
CLOSE_REVOKED = 4003
CLOSE_REPLACED = 4000
CLOSE_AUTH = 4001


async def send_ws(ws: web.WebSocketResponse, message: dict[str, Any]) -> None:
    """Send one message, best effort (a closed or stuck socket is ignored)."""
    if ws.closed:
        return
    with contextlib.suppress(ConnectionError, TimeoutError, RuntimeError):
        async with asyncio.timeout(SEND_TIMEOUT):
            await ws.send_str(json.dumps(message, separators=(",", ":")))


async def close_ws(ws: web.WebSocketResponse, code: int, reason: bytes) -> None:
    """Close the socket, best effort, within 5 s."""
    with contextlib.suppress(ConnectionError, TimeoutError, RuntimeError):
        async with asyncio.timeout(5):
            await ws.close(code=code, message=reason)


async def fatal(ws: web.WebSocketResponse, code: str, message: str, close: int) -> None:
    """A fatal error frame, then close."""
    await send_ws(ws, error_frame(code, message, fatal=True))
    await close_ws(ws, close, code.encode("ascii"))


async def receive(ws: web.WebSocketResponse) -> dict[str, Any] | None:
    """The next message as a dict; None when the peer closed; FrameError if malformed."""
    msg = await ws.receive()
    if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
        return None
    if msg.type == WSMsgType.ERROR:
        raise FrameError("frame is malformed or too large")
    if msg.type != WSMsgType.TEXT:
        raise FrameError("only JSON text frames are accepted")
    try:
        data = json.loads(msg.data)
    except (ValueError, RecursionError):
        raise FrameError("frame is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise FrameError("frame must be a JSON object with a type")
    return data


async def verify_device(
    store: Store, clock: Callable[[], float], ws: web.WebSocketResponse, client: str
) -> tuple[Device, dict[str, Any]] | None:
    """Challenge, then check the device's ``auth`` answer (see ``Hub.verify_device``)."""
    challenge = auth.new_challenge()
    await send_ws(ws, auth.challenge_message(challenge, clock()))
    try:
        async with asyncio.timeout(AUTH_TIMEOUT):
            data = await receive(ws)
        if data is None:
            return None
        try:
            device_id, signature = auth.parse_auth(data)
        except ValueError as exc:
            raise FrameError(str(exc)) from None
        device = await asyncio.to_thread(store.get_device, device_id)
        if device is None:
            raise ServerError("unknown device", code="auth-invalid", status=401)
        auth.verify_ws_answer(device.public_key, challenge, device_id, signature)
        if device.revoked:
            raise ServerError("this device has been revoked", code="device-revoked", status=403)
        if device.cert_not_after < clock() - identity.CLOCK_SKEW.total_seconds():
            raise ServerError("certificate has expired", code="cert-expired", status=401)
    except TimeoutError:
        await send_ws(ws, error_frame("auth-timeout", "no auth in time", fatal=True))
        await close_ws(ws, CLOSE_AUTH, b"auth timeout")
        return None
    except FrameError as exc:
        await fatal(ws, exc.code, exc.message, WSCloseCode.POLICY_VIOLATION)
        return None
    except ServerError as exc:
        logger.info("ws auth refused code=%s client=%s", exc.code, client)
        close = CLOSE_REVOKED if exc.code == "device-revoked" else CLOSE_AUTH
        await fatal(ws, exc.code, exc.message, close)
        return None
    return device, data
