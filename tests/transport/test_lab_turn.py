"""TURN in the lab: two devices with UDP blocked between them connect through a real coturn.

Three lab hosts: A and B (two devices of one account) and T (coturn's
``turnserver`` with ``use-auth-secret``). A real handoff-server on loopback
is configured with T's STUN/TURN URLs and the same secret; each device gets
its credentials from ``ServerClient.ice_servers()`` (``GET /v1/ice``). With
UDP between A and B dropped, real aiortc peers (``webrtc.connect`` /
``webrtc.accept``, run inside A and B) still connect, and the test checks
that the bytes went through T: the nominated ICE pair has a relay candidate
on T's address, coturn logged an allocation for each device's username, and
T's interface received at least the payload. With credentials coturn does not
accept (a turnserver with another secret), the same connection fails.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import selectors
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from handoffd import identity
from handoffd.serverlink import IceServerInfo, JoinResult
from tests.lab import Host, Lab
from tests.lab.coturn import Coturn, start_coturn
from tests.lab.fixtures import LabFactory
from tests.server.helpers import cli_invite, create_account, pair
from tests.support.processes import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
PAYLOAD = 1024 * 1024 + 12345
CONNECT_TIMEOUT = 15.0
FAILING_CONNECT_TIMEOUT = 8.0


@dataclass(frozen=True)
class Dev:
    """A paired device and the ICE servers the server gave it."""

    key: Ed25519PrivateKey
    result: JoinResult
    ice: tuple[IceServerInfo, ...]
    expires: float

    @property
    def turn_username(self) -> str:
        (turn,) = [s for s in self.ice if s.username is not None]
        assert turn.username is not None
        return turn.username


async def _pair_two(server: ServerProcess) -> tuple[Dev, Dev]:
    account = create_account(server.data, "travel")
    devices: list[Dev] = []
    for name in ("a", "b"):
        url, _ = cli_invite(server.data, account)
        key, result, client = await pair(server, url, name=name)
        try:
            ice, expires = await client.ice_servers()
        finally:
            await client.close()
        devices.append(Dev(key, result, ice, expires))
    return devices[0], devices[1]


async def _refresh(server: ServerProcess, dev: Dev) -> Dev:
    async with server.client(dev.key, dev.result) as client:
        ice, expires = await client.ice_servers()
    return Dev(dev.key, dev.result, ice, expires)


def _spec(tmp: Path, role: str, host: Host, dev: Dev, timeout: float, **extra: Any) -> Path:
    key_file = tmp / f"{role}.key"
    if not key_file.exists():
        identity.save_private_key(key_file, dev.key)
    spec = {
        "role": role,
        "key_file": str(key_file),
        "cert": identity.cert_to_pem(dev.result.device_cert).decode(),
        "ca": identity.cert_to_pem(dev.result.account_ca).decode(),
        "crl": identity.crl_to_pem(dev.result.crl).decode(),
        "address": host.address,
        "ice": [
            {"urls": list(s.urls), "username": s.username, "credential": s.credential}
            for s in dev.ice
        ],
        "connect_timeout": timeout,
        **extra,
    }
    path = tmp / f"{role}-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(spec))
    return path


def read_line(stream: IO[str], timeout: float) -> str:
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    try:
        if sel.select(timeout=timeout):
            return stream.readline().strip()
        return ""
    finally:
        sel.unregister(stream)


def _last_json(text: str) -> dict[str, Any]:
    lines = [line for line in text.splitlines() if line.startswith("{")]
    assert lines, text
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _connect_pair(
    tmp: Path, a: Host, b: Host, dev_a: Dev, dev_b: Dev, timeout: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """B accepts, A connects and sends PAYLOAD bytes; both results."""
    callee = b.popen(
        [
            sys.executable,
            "-m",
            "tests.transport.turn_peer",
            str(_spec(tmp, "accept", b, dev_b, timeout)),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert callee.stdout is not None
        ready = read_line(callee.stdout, 30)
        assert ready.startswith("ready "), (ready, callee.poll())
        port = int(ready.split()[1])
        spec = _spec(
            tmp,
            "connect",
            a,
            dev_a,
            timeout,
            peer=dev_b.result.device_id,
            signal=[b.address, port],
            payload=PAYLOAD,
        )
        caller = a.run(
            [sys.executable, "-m", "tests.transport.turn_peer", str(spec)],
            timeout=120,
            check=False,
        )
        assert caller.returncode == 0, caller.stderr[-3000:]
        out, err = callee.communicate(timeout=120)
        assert callee.returncode == 0, err[-3000:]
        return _last_json(caller.stdout), _last_json(out)
    finally:
        if callee.poll() is None:
            callee.kill()
            callee.wait(timeout=10)


def _rx_bytes(host: Host) -> int:
    stats = json.loads(host.run(["ip", "-j", "-s", "link", "show", "eth0"]).stdout)
    return int(stats[0]["stats64"]["rx"]["bytes"])


def _secret_file(tmp: Path, secret: str) -> Path:
    path = tmp / "turn-secret"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return path


@pytest.mark.lab
@pytest.mark.timeout(300)
def test_turn_carries_the_connection_when_udp_between_devices_is_blocked(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    lab: Lab = lab_factory(3)
    a, b, t = lab.hosts
    secret = secrets.token_hex(32)
    coturns: list[Coturn] = []
    coturn = start_coturn(t, secret=secret, workdir=tmp_path / "coturn")
    coturns.append(coturn)
    server = ServerProcess(
        tmp_path / "data",
        extra=(
            "--stun",
            coturn.stun_url,
            "--turn",
            coturn.turn_url,
            "--turn-secret-file",
            str(_secret_file(tmp_path, secret)),
            "--turn-ttl",
            "600",
        ),
    )
    try:
        server.start()
        dev_a, dev_b = asyncio.run(_pair_two(server))
        assert [s.urls for s in dev_a.ice] == [(coturn.stun_url,), (coturn.turn_url,)]
        # UDP between the two devices is dropped both ways; both still reach T.
        lab.block_udp(a, b)
        lab.block_udp(b, a)

        rx_before = _rx_bytes(t)
        res_a, res_b = _connect_pair(tmp_path, a, b, dev_a, dev_b, CONNECT_TIMEOUT)
        rx_after = _rx_bytes(t)

        assert res_a.get("ok") is True, res_a
        assert res_b.get("ok") is True, res_b
        assert res_b["size"] == res_a["size"] == PAYLOAD
        assert res_b["sha256"] == res_a["sha256"]
        # Through TURN: each side's nominated pair has a relay candidate on T...
        for res in (res_a, res_b):
            assert "relay" in res["pair"], res
            assert "relay" in res["local_types"], res
            assert any(addr.startswith(f"{t.address}:") for addr in res["pair_addresses"]), res
        # ...coturn allocated for both devices' usernames from /v1/ice...
        assert coturn.allocations(dev_a.turn_username) >= 1, coturn.log_text()[-3000:]
        assert coturn.allocations(dev_b.turn_username) >= 1, coturn.log_text()[-3000:]
        # ...and the payload crossed T's interface.
        assert rx_after - rx_before >= PAYLOAD

        # Negative: a turnserver with another secret refuses the credentials the
        # server hands out; with UDP still blocked the connection cannot happen.
        coturn.stop()
        wrong = start_coturn(t, secret=secrets.token_hex(32), workdir=tmp_path / "coturn-wrong")
        coturns.append(wrong)
        dev_a, dev_b = asyncio.run(_refresh(server, dev_a)), asyncio.run(_refresh(server, dev_b))
        res_a, res_b = _connect_pair(tmp_path, a, b, dev_a, dev_b, FAILING_CONNECT_TIMEOUT)
        assert res_a.get("error") in ("ice-failed", "connect-timeout"), res_a
        assert res_b.get("error") in ("ice-failed", "connect-timeout"), res_b
        assert wrong.allocations(dev_a.turn_username) == 0
        assert wrong.allocations(dev_b.turn_username) == 0
        assert wrong.refusals(dev_a.turn_username) >= 1, wrong.log_text()[-3000:]
        assert wrong.refusals(dev_b.turn_username) >= 1, wrong.log_text()[-3000:]
    finally:
        server.stop()
        for c in coturns:
            c.stop()
