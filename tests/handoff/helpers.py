"""Two real daemons paired to a real server, finding each other by mDNS on this machine."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from handoffd.control.client import HandoffClient
from tests.server.helpers import cli_invite, create_account
from tests.support.processes import DaemonProcess, ServerProcess
from tests.support.waiting import wait_for as wait_for

NOTES_APP = Path(__file__).resolve().parents[2] / "examples" / "notes_app.py"
T = TypeVar("T")


@dataclass
class Pair:
    """Server, source daemon ``a`` ("laptop") and target daemon ``b`` ("desk")."""

    root: Path
    server: ServerProcess
    a: DaemonProcess
    b: DaemonProcess
    a_id: str
    b_id: str

    def client(self, d: DaemonProcess) -> HandoffClient:
        """An SDK client of ``d``."""
        return HandoffClient(d.socket, timeout=30)


def _pair_daemon(server: ServerProcess, d: DaemonProcess, name: str) -> str:
    url, _ = cli_invite(server.data, "ana")
    status, body = d.curl("POST", "/v1/pair", {"invite": url, "name": name})
    if status != 200:
        raise AssertionError(f"pairing {name} failed: {body}")
    return str(body["device_id"])


def wait_nearby(d: DaemonProcess, other: str, timeout: float = 60.0) -> None:
    """Poll ``GET /v1/devices`` (which also refreshes the device cache) until ``other`` is nearby."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = d.curl("GET", "/v1/devices")
        if status == 200 and any(x["device_id"] == other and x["nearby"] for x in body["devices"]):
            return
        time.sleep(0.3)
    raise AssertionError(f"{other} never became nearby; log: {d.log.read_text()[-3000:]}")


@contextmanager
def paired_daemons(
    env_a: dict[str, str] | None = None, env_b: dict[str, str] | None = None
) -> Iterator[Pair]:
    """Start a server and two daemons (extra environment each), pair both, wait until each
    sees the other nearby."""
    root = Path(tempfile.mkdtemp(prefix="hh", dir="/tmp"))
    server = ServerProcess(root / "srv").start()
    a = DaemonProcess(root / "a", env=dict(env_a or {}))
    b = DaemonProcess(root / "b", env=dict(env_b or {}))
    try:
        create_account(server.data, "ana")
        for d in (a, b):
            d.home.mkdir(mode=0o700)
            d.start()
        a_id = _pair_daemon(server, a, "laptop")
        b_id = _pair_daemon(server, b, "desk")
        wait_nearby(a, b_id)
        wait_nearby(b, a_id)
        yield Pair(root=root, server=server, a=a, b=b, a_id=a_id, b_id=b_id)
    finally:
        for d in (a, b):
            d.kill()
        server.stop()
        if not os.environ.get("HANDOFF_TEST_KEEP"):  # set it to read the daemons' logs
            shutil.rmtree(root, ignore_errors=True)


async def wait_state(
    client: HandoffClient, handoff_id: str, states: set[str], within: float = 90.0
) -> dict[str, Any]:
    """The handoff's JSON once its state is one of ``states``."""

    async def probe() -> dict[str, Any] | None:
        h: dict[str, Any] = await client.request("GET", f"/v1/handoffs/{handoff_id}")
        return h if h["state"] in states else None

    return await wait_for(probe, within=within, what=f"handoff {handoff_id} in {states}")


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_random(path: Path, size: int) -> str:
    """A file of ``size`` pseudo-random bytes; its SHA-256."""
    h = hashlib.sha256()
    seed = hashlib.sha256(path.name.encode()).digest()
    with path.open("wb") as f:
        written = 0
        counter = 0
        while written < size:
            block = hashlib.shake_256(seed + counter.to_bytes(8, "big")).digest(
                min(1 << 20, size - written)
            )
            f.write(block)
            h.update(block)
            written += len(block)
            counter += 1
    return h.hexdigest()


def register_notes_app(d: DaemonProcess) -> None:
    """``notes_app.py register`` on daemon ``d`` (the daemon launches it to resume)."""
    subprocess.run(
        [sys.executable, str(NOTES_APP), "--home", str(d.home), "register"],
        check=True,
        capture_output=True,
        timeout=60,
    )


def checkpoints(d: DaemonProcess, handoff_id: str) -> dict[int, int]:
    """What ``d`` recorded as durable (read straight from its state.db)."""
    db = sqlite3.connect(d.paths.state_db, timeout=10)
    try:
        rows = db.execute(
            "SELECT idx, offset FROM engine_checkpoints WHERE handoff_id = ?", (handoff_id,)
        ).fetchall()
    finally:
        db.close()
    return {int(i): int(o) for i, o in rows}
