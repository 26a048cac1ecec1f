"""The world of the lab end-to-end suite (tests/handoff/e2e/) and what its cases share.

LAN handoff end to end in the network lab: real daemon processes in separate hosts (network
namespaces), real multicast discovery, real aiortc, a real server on a lab address.

Layout (one lab for the module, three hosts on one bridge):

- h0 198.18.0.1: ``handoff-server`` (port 8443) and "laptop" (the source, ``a``);
- h1 198.18.0.2: "desk" (the target, ``b``; LAN signaling on port 7711), with the example
  notes app registered as the launch command;
- h2 198.18.0.3: the devices that must be refused (another account, revoked, expired) and
  the rogue signaling client, each started for its test and stopped after it.

Byte counts come from two independent places: the engine's own counters in the handoff
record (``bytes_total``, ``wire``), and the kernel's counters of the hosts' lab interfaces
(every frame that left or reached a host), which prove what crossed the network regardless
of what the engine believes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handoffd.control.client import HandoffClient, Item
from handoffd.handoff.link import WINDOW
from tests.handoff.helpers import (
    wait_nearby,
    wait_state,
    write_random,
)
from tests.handoff.labkit import (
    SIGNALING_PORT,
    LabDaemon,
    LabServer,
    MiB,
    WireMeter,
)
from tests.lab import Host, Lab

DOCS = {"one-k.bin": 1024, "one-m.bin": MiB, "fifty-m.bin": 50 * MiB}
SMALL_WIRE = 1 * MiB
# These tests follow transfers on the data channel and the relay (their wire counters, their
# faults): the receivers offer no LAN lane (tests/handoff/test_lab_lane.py has its own).
NO_LANE = {"HANDOFF_LANE_MIN_BYTES": "-1"}
"""Far below any document that must not cross: all the traffic of a handoff that sends no
document (signaling, DTLS, SCTP, messages, mDNS chatter of the moment) fits in it."""


@dataclass
class World:
    """The module's lab, server, source ``a`` (laptop, h0) and target ``b`` (desk, h1)."""

    lab: Lab
    root: Path
    server: LabServer
    account_id: str
    a: LabDaemon
    b: LabDaemon
    a_id: str
    b_id: str
    docs: dict[str, tuple[Path, str]]

    @property
    def hosts(self) -> tuple[Host, Host, Host]:
        """(h0, h1, h2)."""
        h0, h1, h2 = self.lab.hosts
        return h0, h1, h2

    def client(self, d: LabDaemon) -> HandoffClient:
        """An SDK client of ``d``."""
        return HandoffClient(d.socket, timeout=30)

    def daemon(self, name: str, host: Host, **env: str) -> LabDaemon:
        """A new (not started) daemon with its own home, in ``host``."""
        d = LabDaemon(self.root / name, env={**NO_LANE, **env}, host=host)
        d.home.mkdir(mode=0o700)
        return d

    @property
    def b_signaling(self) -> str:
        """The target's LAN signaling address."""
        return f"{self.hosts[1].address}:{SIGNALING_PORT}"


def messages(n: int, prefix: str = "message") -> list[Item]:
    return [Item.of_text("message", f"msg-{i:03d}.txt", f"{prefix} {i}") for i in range(n)]


def message_bytes(n: int, prefix: str = "message") -> int:
    return sum(len(f"{prefix} {i}".encode()) for i in range(n))


async def get_handoff(client: HandoffClient, handoff_id: str) -> dict[str, Any]:
    h: dict[str, Any] = await client.request("GET", f"/v1/handoffs/{handoff_id}")
    return h


async def ensure_b_running(world: World) -> None:
    """Restart the target if a failed test left it down (later tests need it)."""
    if not world.b.running():
        world.b.start()
        wait_nearby(world.a, world.b_id)


async def clean_wire_cost(world: World, a: HandoffClient, size: int) -> int:
    """Bytes the laptop's interface sends for an uninterrupted handoff of ``size`` bytes."""
    h0, _, _ = world.hosts
    doc = world.root / f"clean-{size}.bin"
    await asyncio.to_thread(write_random, doc, size)
    session = await a.publish("org.example.clean", "clean", items=[Item.of_path("document", "c.bin", doc)])  # fmt: skip
    meter = WireMeter(h0).start()
    h = await a.send(session.id, "desk")
    done = await wait_state(a, h.id, {"delivered", "resumed", "failed", "declined"}, 240)
    assert done["state"] == "delivered", done
    assert done["attempts"] == 1, done
    return meter.read()[1]


def resend_bound(clean_tx: int, size: int) -> int:
    """The most the laptop may send for ``size`` bytes if no acknowledged byte goes twice:
    the clean cost, plus one window of unacknowledged data (and 1 MiB for background traffic
    and SCTP retransmissions), at the measured bytes-on-the-wire per payload byte."""
    per_byte = clean_tx / size
    return clean_tx + int((WINDOW + MiB) * per_byte)
