"""handoff-server as a real process: the device WebSocket (presence, signals, revocation,
malformed frames), one account never reaching another."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from handoffd import identity
from handoffd.errors import ServerError
from handoffd.serverlink import ServerClient, ServerLink
from handoffd.wire import auth
from tests.server.conftest import Seed
from tests.server.helpers import cli, new_device
from tests.support.processes import ServerProcess

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------- WebSocket


class Recorder:
    """Collects what a ServerLink reports."""

    def __init__(self) -> None:
        self.presence: list[frozenset[str]] = []
        self.signals: list[tuple[str, bytes]] = []
        self.errors: list[ServerError] = []
        self.changed = asyncio.Event()

    def on_presence(self, online: frozenset[str]) -> None:
        self.presence.append(online)
        self.changed.set()

    def on_signal(self, sender: str, data: bytes) -> None:
        self.signals.append((sender, data))
        self.changed.set()

    def on_error(self, error: ServerError) -> None:
        self.errors.append(error)
        self.changed.set()

    async def until(self, check: Any) -> None:
        async with asyncio.timeout(15):
            while not check():
                self.changed.clear()
                await self.changed.wait()


async def _link(client: ServerClient) -> tuple[ServerLink, Recorder]:
    rec = Recorder()
    link = client.connect(rec.on_presence, rec.on_signal, on_error=rec.on_error)
    await link.start()
    async with asyncio.timeout(15):
        await link.wait_connected()
    return link, rec


@pytest.mark.asyncio
async def test_presence_and_signals_within_one_account(server: ServerProcess, alice: Seed) -> None:
    _, r1, c1 = await new_device(server, alice.key, alice.result, "one")
    _, r2, c2 = await new_device(server, alice.key, alice.result, "two")
    link1, rec1 = await _link(c1)
    link2, rec2 = await _link(c2)
    try:
        both = {r1.device_id, r2.device_id}
        await rec1.until(lambda: both <= link1.online)
        await rec2.until(lambda: both <= link2.online)
        online_ids = {d.device_id for d in await c1.devices() if d.online}
        assert both <= online_ids

        envelope = b"\x00opaque signed envelope\xff" * 100
        await link1.send_signal(r2.device_id, envelope)
        await rec2.until(lambda: bool(rec2.signals))
        assert rec2.signals == [(r1.device_id, envelope)]

        # Unknown target: an error for the sender, nothing for anyone else.
        await link1.send_signal("A" * 32, b"hello")
        await rec1.until(lambda: bool(rec1.errors))
        assert rec1.errors[0].code == "target-unavailable"

        await link2.close()
        await rec1.until(lambda: r2.device_id not in link1.online)
        assert r1.device_id in link1.online
    finally:
        await link1.close()
        await link2.close()
        await c1.close()
        await c2.close()


@pytest.mark.asyncio
async def test_no_signals_across_accounts(server: ServerProcess, alice: Seed, bob: Seed) -> None:
    _, ra, ca = await new_device(server, alice.key, alice.result, "alice-ws")
    _, rb, cb = await new_device(server, bob.key, bob.result, "bob-ws")
    link_a, rec_a = await _link(ca)
    link_b, rec_b = await _link(cb)
    try:
        assert rb.device_id not in link_a.online  # presence never shows another account
        await link_a.send_signal(rb.device_id, b"cross-account")
        await rec_a.until(lambda: bool(rec_a.errors))
        assert rec_a.errors[0].code == "target-unavailable"
        # A ping round-trip on bob's link proves the server processed everything before it.
        await link_b.send_signal(rb.device_id, b"to myself")
        await rec_b.until(lambda: bool(rec_b.errors))
        assert rec_b.signals == []
        assert ra.device_id not in link_b.online
    finally:
        await link_a.close()
        await link_b.close()
        await ca.close()
        await cb.close()


@pytest.mark.asyncio
async def test_revoked_device_is_cut_off_http_and_ws(server: ServerProcess, alice: Seed) -> None:
    _, victim, vclient = await new_device(server, alice.key, alice.result, "victim")
    _, _other, oclient = await new_device(server, alice.key, alice.result, "other")
    vlink, vrec = await _link(vclient)
    olink, orec = await _link(oclient)
    try:
        await orec.until(lambda: victim.device_id in olink.online)
        # Revoke from the CLI (another process): the running server notices.
        cli(server.data, "revoke", "alice", identity.format_device_id(victim.device_id))
        await vrec.until(lambda: any(e.code == "device-revoked" for e in vrec.errors))
        await orec.until(lambda: victim.device_id not in olink.online)
        assert vlink.last_error is not None
        assert vlink.last_error.code == "device-revoked"
        assert not vlink.connected

        before = server.counts()
        with pytest.raises(ServerError) as e:
            await vclient.devices()
        assert (e.value.code, e.value.status) == ("device-revoked", 403)
        with pytest.raises(ServerError) as e:
            await vclient.create_invite()
        assert e.value.code == "device-revoked"
        with pytest.raises(ServerError) as e:
            await vclient.renew()
        assert e.value.code == "device-revoked"
        # And a new WebSocket is refused.
        vlink2, _ = vclient.connect(lambda _o: None, lambda _s, _d: None), None
        await vlink2.start()
        with pytest.raises(ServerError) as e:
            async with asyncio.timeout(15):
                await vlink2.wait_connected()
        assert e.value.code == "device-revoked"
        await vlink2.close()
        assert server.counts() == before
    finally:
        await vlink.close()
        await olink.close()
        await vclient.close()
        await oclient.close()


async def _raw_ws(
    server: ServerProcess, session: aiohttp.ClientSession
) -> aiohttp.ClientWebSocketResponse:
    assert server.fingerprint is not None
    pin = aiohttp.Fingerprint(bytes.fromhex(server.fingerprint[7:]))
    return await session.ws_connect(server.url.replace("https", "wss") + "/v1/ws", ssl=pin)


async def _auth_ws(ws: aiohttp.ClientWebSocketResponse, key: Ed25519PrivateKey) -> dict[str, Any]:
    challenge = await ws.receive_json(timeout=10)
    assert challenge["type"] == "challenge"
    nonce = auth.b64d(challenge["nonce"])
    await ws.send_json(
        {
            "type": "auth",
            "device_id": identity.device_id_for(key.public_key()),
            "signature": auth.sign_ws_challenge(key, nonce),
        }
    )
    welcome: dict[str, Any] = await ws.receive_json(timeout=10)
    return welcome


async def _expect_fatal(ws: aiohttp.ClientWebSocketResponse, code: str) -> None:
    msg = await ws.receive_json(timeout=10)
    while msg["type"] == "presence":
        msg = await ws.receive_json(timeout=10)
    assert msg["type"] == "error"
    assert msg["error"]["code"] == code
    assert msg["fatal"] is True
    closing = await ws.receive(timeout=10)
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


@pytest.mark.asyncio
async def test_malformed_frames_close_that_socket_only(server: ServerProcess, alice: Seed) -> None:
    async with aiohttp.ClientSession() as session:
        # Before auth: garbage, a wrong signature.
        ws = await _raw_ws(server, session)
        await ws.receive_json(timeout=10)
        await ws.send_str("{not json")
        await _expect_fatal(ws, "frame-malformed")

        ws = await _raw_ws(server, session)
        await ws.receive_json(timeout=10)
        await ws.send_json(
            {"type": "auth", "device_id": alice.result.device_id, "signature": auth.b64e(b"x" * 64)}
        )
        await _expect_fatal(ws, "auth-invalid")

        # After auth: each kind of bad frame.
        bad_frames: list[Any] = [
            "not json",
            b"\x00binary",
            "[1, 2, 3]",
            json.dumps({"type": "no-such-type"}),
            json.dumps({"type": "signal", "to": 5, "data": "AA"}),
            json.dumps({"type": "signal", "to": "A" * 32, "data": "!!not base64!!"}),
            json.dumps({"type": "signal", "to": "A" * 32, "data": "A" * (400 * 1024)}),
            json.dumps({"type": "ping", "id": {"nested": True}}),
        ]
        for frame in bad_frames:
            ws = await _raw_ws(server, session)
            welcome = await _auth_ws(ws, alice.key)
            assert welcome["type"] == "welcome"
            if isinstance(frame, bytes):
                await ws.send_bytes(frame)
            else:
                await ws.send_str(frame)
            await _expect_fatal(ws, "frame-malformed")

        # An oversized frame (over the 512 KiB limit) is refused as well.
        ws = await _raw_ws(server, session)
        await _auth_ws(ws, alice.key)
        await ws.send_str("x" * (600 * 1024))
        closing = await ws.receive(timeout=10)
        while closing.type == aiohttp.WSMsgType.TEXT:
            closing = await ws.receive(timeout=10)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)

        # The server still serves: ping/pong on a fresh socket, reserved relay types answered.
        ws = await _raw_ws(server, session)
        await _auth_ws(ws, alice.key)
        await ws.send_json({"type": "ping", "id": 7})
        assert await ws.receive_json(timeout=10) == {"type": "pong", "id": 7}
        await ws.send_json({"type": "relay-data", "id": "r1"})  # relay-open: see tests/relay
        answer = await ws.receive_json(timeout=10)
        assert answer["error"]["code"] == "unsupported"
        assert answer["ref"] == "r1"
        await ws.close()
    async with server.client() as client:
        assert (await client.info())["name"] == "handoff-server"
