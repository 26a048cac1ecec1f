"""Relay sessions across instances: joins that land on another instance are piped to the holder.

A session lives on the instance where ``relay-open`` arrived (its holder,
``hp:relay:<session>`` in Redis for the token lifetime). The offer reaches a
target held by another instance through the bus like a signal. A device's
``/v1/relay`` join may reach any instance through the load balancer: the
instance that gets it challenges the device as usual; if the session named in
its ``auth`` is held elsewhere, it stores a one-time claim (device, session,
relay token) in Redis under a random 256-bit key, opens ``/v1/relay`` on the
holder's own URL with that key in ``X-Handoff-Relay-Via``, and pipes every
frame both ways unchanged. The holder takes the claim (``GETDEL``: once) in
place of the challenge, then checks the relay token as for any join.

Piping rather than redirecting keeps the client and the load balancer as they
are; the cost is one extra hop for relayed bytes between instances.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import WSMsgType, web

from handoffd.server.store import Device

if TYPE_CHECKING:
    from handoffd.server.hub import Hub

logger = logging.getLogger("handoffd.server.relaybus")

VIA_HEADER = "X-Handoff-Relay-Via"
CONNECT_TIMEOUT = 10.0
SEND_TIMEOUT = 60.0


async def verify_side(
    hub: Hub, request: web.Request, ws: web.WebSocketResponse, client: str
) -> tuple[Device, dict[str, Any]] | None:
    """The device joining on ``ws``: challenged here, or vouched for by a piping instance."""
    via = request.headers.get(VIA_HEADER)
    if via is None or hub.bus is None:
        return await hub.verify_device(ws, client)
    claim = await hub.bus.take_relay_claim(via)
    device = None
    if claim is not None:
        device = await asyncio.to_thread(hub.store.get_device, claim["device"])
    if claim is None or device is None or device.revoked:
        logger.info("relay via refused client=%s", client)
        await hub.refuse(ws, "auth-invalid", "relay claim is unknown or used")
        return None
    return device, {"session": claim["session"], "token": claim["token"]}


async def pipe_elsewhere(
    hub: Hub, ws: web.WebSocketResponse, device: Device, data: dict[str, Any], max_frame: int
) -> bool:
    """Pipe ``ws`` to the instance holding the session named in ``data``; False if it is here."""
    bus, relay = hub.bus, hub.relay
    session, token = data.get("session"), data.get("token")
    if bus is None or relay is None or not isinstance(session, str) or len(session) > 64:
        return False
    if relay.holds(session) or not isinstance(token, str) or len(token) > 128:
        return False
    url = await bus.relay_holder_url(session)
    if url is None:
        return False
    via = secrets.token_urlsafe(32)
    await bus.put_relay_claim(via, {"device": device.device_id, "session": session, "token": token})
    logger.info("relay join piped session=%s device=%s", session, device.device_id)
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(
                url + "/v1/relay",
                headers={VIA_HEADER: via},
                max_msg_size=max_frame + 1024,
                autoping=True,
                compress=0,
                timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                ssl=False,
            ) as upstream,
        ):
            await _pipe(ws, upstream)
            code = upstream.close_code or aiohttp.WSCloseCode.OK
    except (aiohttp.ClientError, OSError, TimeoutError):
        logger.warning("relay pipe failed session=%s", session)
        code = aiohttp.WSCloseCode.INTERNAL_ERROR
    with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError):
        async with asyncio.timeout(5):
            await ws.close(code=code)
    return True


async def _pipe(down: web.WebSocketResponse, up: aiohttp.ClientWebSocketResponse) -> None:
    """Forward frames both ways until either side closes."""

    async def forward(src: Any, dst: Any) -> None:
        async for msg in src:
            async with asyncio.timeout(SEND_TIMEOUT):
                if msg.type == WSMsgType.BINARY:
                    await dst.send_bytes(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    await dst.send_str(msg.data)
                else:
                    return

    tasks = [
        asyncio.create_task(forward(down, up), name="relay-pipe-up"),
        asyncio.create_task(forward(up, down), name="relay-pipe-down"),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)  # our own cancellation still goes through
        for task in tasks:
            if not task.cancelled():
                with contextlib.suppress(ConnectionError, TimeoutError):
                    task.result()
