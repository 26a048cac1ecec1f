"""Discovery between processes in two lab hosts over real multicast (root only)."""

from __future__ import annotations

import json
import selectors
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.lab import Host, Lab

KEY = b"\x01" * 32
A, B = "A" * 32, "B" * 32
PEER = str(Path(__file__).parent / "peer_proc.py")
ROOT = str(Path(__file__).parent.parent.parent)


def _next(proc: subprocess.Popen[str], want: str, timeout: float = 15.0) -> dict[str, Any] | None:
    """Read JSON lines until one of kind ``want`` arrives (None on timeout)."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            line = proc.stdout.readline()
            if not line:
                break
            event: dict[str, Any] = json.loads(line)
            if event["kind"] == want:
                return event
    finally:
        sel.close()
    return None


def _peer(host: Host, me: str, *extra: str) -> subprocess.Popen[str]:
    argv = [sys.executable, PEER, me, "4500", KEY.hex(), f"{A},{B}", *extra]
    proc: subprocess.Popen[str] = host.popen(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert _next(proc, "started") is not None
    return proc


@pytest.mark.lab
def test_lab_discovery_liveness_and_address_change(lab: Lab) -> None:
    h0, h1 = lab.hosts
    p0 = _peer(h0, A)
    p1 = _peer(h1, B)
    seen = _next(p0, "nearby")
    assert seen is not None
    assert (seen["device"], seen["port"], seen["addresses"]) == (B, 4500, [h1.address])
    back = _next(p1, "nearby")
    assert back is not None
    assert back["addresses"] == [h0.address]
    # A second address on h1: re-read within a second, re-announced, seen by h0.
    extra = h1.address.rsplit(".", 1)[0] + ".77"
    h1.run(["ip", "addr", "add", f"{extra}/{h1.prefix}", "dev", "eth0"])
    moved = _next(p0, "nearby")
    assert moved is not None
    assert sorted(moved["addresses"]) == sorted([h1.address, extra])
    # Killed without goodbye: h0's liveness reports it gone.
    p1.kill()
    p1.wait(timeout=10)
    gone = _next(p0, "gone")
    assert gone is not None
    assert gone["device"] == B


@pytest.mark.lab
def test_lab_multicast_blocked_then_unicast_peers(lab: Lab) -> None:
    h0, h1 = lab.hosts
    h0.block_multicast()
    h1.block_multicast()
    p0 = _peer(h0, A)
    p1 = _peer(h1, B)
    assert _next(p0, "nearby", timeout=4) is None
    p0.kill()  # one responder per host gets unicast packets to 5353: leave only the new one
    p0.wait(timeout=10)
    p0u = _peer(h0, A, "--unicast", h1.address)
    seen = _next(p0u, "nearby")
    assert seen is not None
    assert (seen["device"], seen["addresses"], seen["via"]) == (B, [h1.address], "unicast")
    # Liveness checks go by unicast too: several stale periods pass without a false "gone".
    assert _next(p0u, "gone", timeout=5) is None
    p1.kill()
    p1.wait(timeout=10)
    assert _next(p0u, "gone") is not None
