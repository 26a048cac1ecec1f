"""The hub under concurrent connects: every device hears its welcome first, links never bounce.

A device's first message after ``auth`` must be ``welcome`` (``ServerLink``
treats anything else as a broken handshake and reconnects). Presence caused
by other devices connecting or leaving at the same moment must come after it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from handoffd import identity
from handoffd.serverlink import ServerClient, ServerLink
from handoffd.wire import auth
from tests.server.helpers import ServerProcess, cli_invite, create_account, pair

# More than the default 60 s: rounds of concurrent WebSocket connects to a real server.
pytestmark = pytest.mark.timeout(180)

DEVICES = 8
ROUNDS = 6


class Device:
    """A paired device of the test account: its key, id and a client of the server."""

    def __init__(self, key: Ed25519PrivateKey, client: ServerClient) -> None:
        self.key = key
        self.device_id = identity.device_id_for(key.public_key())
        self.client = client


async def _devices(server: ServerProcess, account: str, n: int) -> list[Device]:
    url, _ = cli_invite(server.data, account)
    key, _, first = await pair(server, url, name="d0")
    made = [Device(key, first)]
    for i in range(1, n):
        invite = await first.create_invite()
        key, _, client = await pair(server, invite.url, name=f"d{i}")
        made.append(Device(key, client))
    return made


@pytest.fixture
def account(server: ServerProcess) -> str:
    """A fresh account per test, so no other test's device shows up in its presence."""
    name = f"hub-{secrets.token_hex(4)}"
    create_account(server.data, name)
    return name


async def _open(
    server: ServerProcess, session: aiohttp.ClientSession, device: Device
) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    """A raw WebSocket for ``device``, authenticated; the first message after ``auth``."""
    assert server.fingerprint is not None
    pin = aiohttp.Fingerprint(bytes.fromhex(server.fingerprint[len("sha256:") :]))
    async with asyncio.timeout(30):
        ws = await session.ws_connect(server.url.replace("https", "wss") + "/v1/ws", ssl=pin)
        challenge = await ws.receive_json()
        assert challenge["type"] == "challenge"
        nonce = auth.b64d(challenge["nonce"])
        signature = auth.sign_ws_challenge(device.key, nonce)
        await ws.send_json({"type": "auth", "device_id": device.device_id, "signature": signature})
        first: dict[str, Any] = await ws.receive_json()
    return ws, first


class Watch:
    """One ServerLink and every presence set it reported."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.seen: list[frozenset[str]] = []
        self.changed = asyncio.Event()
        self.link: ServerLink = device.client.connect(self._presence, lambda _f, _d: None)

    def _presence(self, online: frozenset[str]) -> None:
        self.seen.append(online)
        self.changed.set()

    async def until(self, expected: set[str]) -> None:
        """Wait until the link's presence is exactly ``expected``."""
        async with asyncio.timeout(30):
            while self.link.online != expected:
                self.changed.clear()
                await self.changed.wait()


def _lost(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "handoffd.serverlink" and r.getMessage().startswith("server link lost")
    ]


@pytest.mark.asyncio
async def test_concurrent_connects_hear_welcome_first(server: ServerProcess, account: str) -> None:
    devices = await _devices(server, account, DEVICES)
    welcomes: list[dict[str, Any]] = []
    try:
        async with aiohttp.ClientSession() as session:

            async def churn(device: Device) -> None:
                # Connect, check, leave, again: every leave and join is presence for the others.
                for _ in range(ROUNDS):
                    ws, first = await _open(server, session, device)
                    try:
                        assert first["type"] == "welcome", first
                        assert device.device_id in first["online"]
                        welcomes.append(first)
                    finally:
                        await ws.close()

            async with asyncio.TaskGroup() as tg:
                for device in devices:
                    tg.create_task(churn(device))

            # The same device twice at once: each socket hears its welcome first, then the older
            # one is told it was replaced (never a presence before the welcome).
            for _ in range(ROUNDS):
                (w1, f1), (w2, f2) = await asyncio.gather(
                    _open(server, session, devices[0]), _open(server, session, devices[0])
                )
                assert (f1["type"], f2["type"]) == ("welcome", "welcome"), (f1, f2)
                await w1.close()
                await w2.close()
    finally:
        for device in devices:
            await device.client.close()
    assert len(welcomes) == DEVICES * ROUNDS


@pytest.mark.asyncio
async def test_links_connect_once_and_agree_on_presence(
    server: ServerProcess, account: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="handoffd.serverlink")
    devices = await _devices(server, account, DEVICES)
    spare = devices[-1]
    everyone = [Watch(d) for d in devices]  # the spare's link is the last one
    try:
        async with aiohttp.ClientSession() as session:
            # The spare device holds an old socket that a link for it will replace.
            old, first = await _open(server, session, spare)
            assert first["type"] == "welcome"
            await asyncio.gather(*(w.link.start() for w in everyone))
            async with asyncio.timeout(30):
                await asyncio.gather(*(w.link.wait_connected() for w in everyone))
            all_ids = {d.device_id for d in devices}
            await asyncio.gather(*(w.until(all_ids) for w in everyone))
            # The old socket was told it was replaced, after which the server closed it.
            async with asyncio.timeout(30):
                replaced = await old.receive_json()
                while replaced["type"] == "presence":
                    replaced = await old.receive_json()
            assert replaced["type"] == "error"
            assert replaced["error"]["code"] == "replaced"
            await old.close()
            # No link ever saw its own device missing while it was connected (no bounce).
            for w in everyone:
                assert all(w.device.device_id in s for s in w.seen), w.seen

            # Half leave at once: the others see exactly who is left.
            leaving, staying = everyone[::2], everyone[1::2]
            await asyncio.gather(*(w.link.close() for w in leaving))
            left = {w.device.device_id for w in staying}
            await asyncio.gather(*(w.until(left) for w in staying))
        assert _lost(caplog) == []  # every link connected on its first attempt
    finally:
        for w in everyone:
            await w.link.close()
        for device in devices:
            await device.client.close()
