"""A LAN impostor on a dialed signaling address (issue 16, finding 8), with real daemons.

The laptop is told (``unicast_peers``) that the desk is at the impostor's port,
as a copied mDNS advertisement would; the server is then stopped, so there is
no relay and no forwarding. Before the fix the laptop sent its signed offer
(its certificate, device and account ids) to the impostor and took its
``cert-revoked`` error frame as the desk's final word: failed after one
attempt, the next address never tried. Now the impostor gets a hello and
nothing else, its refusal is a transient failure, and the handoff goes on by
the desk's real address.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from handoffd import identity as idn
from handoffd.control.client import HandoffClient, Item
from tests.daemon.helpers import DaemonProcess
from tests.daemon.test_signaling_listener import free_port, listening_ports
from tests.handoff.helpers import wait_for, wait_state
from tests.server.helpers import ServerProcess, cli_invite, create_account

# More than the default 60 s: a server and two real daemons; the impostor is dialed before the real desk.
pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hi", dir="/tmp"))
    try:
        yield path
    finally:
        if not os.environ.get("HANDOFF_TEST_KEEP"):
            shutil.rmtree(path, ignore_errors=True)


def _pair(server: ServerProcess, d: DaemonProcess, name: str, **settings: Any) -> str:
    d.home.mkdir(mode=0o700)
    d.start()
    if settings:
        status, body = d.curl("PATCH", "/v1/settings", settings)
        assert status == 200, body
    url, _ = cli_invite(server.data, "ana")
    status, body = d.curl("POST", "/v1/pair", {"invite": url, "name": name})
    assert status == 200, body
    return str(body["device_id"])


def _identity_of(d: DaemonProcess) -> dict[str, bytes]:
    """What must not reach an impostor: the laptop's certificate, its ids, its key."""
    cert = idn.load_cert(d.paths.device_cert.read_bytes())
    ca = idn.load_cert(d.paths.account_ca.read_bytes())
    return {
        "certificate": idn.cert_to_der(cert),
        "device id": str(idn.cert_device_id(cert)).encode(),
        "account id": idn.ca_account_id(ca).encode(),
        "public key": cert.public_key().public_bytes_raw(),  # type: ignore[union-attr]
    }


@pytest.fixture
def impostor(root: Path) -> Iterator[tuple[str, Path]]:
    """The impostor process (tests/transport/impostor.py): its address and its record."""
    record = root / "impostor.bin"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.transport.impostor", str(record)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[:1] == ["ready"], line
        yield f"127.0.0.1:{line[1]}", record
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.asyncio
async def test_impostor_gets_no_identity_and_cannot_end_the_handoff(
    root: Path, impostor: tuple[str, Path]
) -> None:
    fake, record = impostor
    server = ServerProcess(root / "srv").start()
    desk_port = free_port()
    a = DaemonProcess(root / "a")
    b = DaemonProcess(root / "b", env={"HANDOFF_SIGNALING_PORT": str(desk_port)})
    try:
        create_account(server.data, "ana")
        # The laptop never browses; the only address it has for the desk is the impostor's.
        _pair(server, a, "laptop", lan_discovery=False, unicast_peers=[fake])
        b_id = _pair(server, b, "desk")
        assert b.proc is not None
        desk_pid = b.proc.pid
        await wait_for(lambda: desk_port in listening_ports(desk_pid), what="the desk's listener")
        async with HandoffClient(a.socket, timeout=30) as c:
            await wait_for(
                lambda: _knows(c, b_id), within=60, what="the desk in the laptop's device list"
            )
            server.stop()  # no relay, no forwarding: only the LAN is left
            session = await c.publish(
                "org.example.impostor",
                "for the desk",
                items=[Item.of_text("message", "m.txt", "hello desk")],
            )
            h = await c.send(session.id, b_id)
            seen = await wait_state(c, h.id, {"retrying", "failed", "delivered"}, within=120)
            # Before: failed, attempts 1, reason cert-revoked, the impostor's text.
            assert seen["state"] == "retrying", seen
            assert "cert-revoked" not in json.dumps(seen)
            assert "ATTACKER" not in json.dumps(seen)
            # The desk's real address appears (after the impostor's): the handoff goes on there.
            status, body = a.curl(
                "PATCH", "/v1/settings", {"unicast_peers": [fake, f"127.0.0.1:{desk_port}"]}
            )
            assert status == 200, body
            done = await wait_state(c, h.id, {"failed", "delivered", "resumed"}, within=180)
            assert done["state"] in ("delivered", "resumed"), done
        wire = record.read_bytes()
        assert wire.count(b"--connection--") >= 2  # dialed on every attempt
        for name, value in _identity_of(a).items():
            assert value not in wire, name
    finally:
        a.kill()
        b.kill()
        server.stop()


async def _knows(c: HandoffClient, device_id: str) -> Any:
    return True if any(d.device_id == device_id for d in await c.devices()) else None
