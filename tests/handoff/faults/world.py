"""The world of the lab fault suite (tests/handoff/faults/): its lab, server and daemons,
and what its cases share (sessions sent and finished, wire bytes, the tmpfs-backed devices).

The lab fault suite: handoffs under network faults, crashes, restarts, a full disk and load,
each ending with zero data lost.

Real daemon processes in separate lab hosts (network namespaces), real multicast discovery,
real aiortc, a real server on a lab address. Every case ends the same way (``_finish``): the
source shows ``delivered`` with every byte counted, the session is still ``active`` on the
source, every item's SHA-256 at the target (the inbox files themselves) equals the source's;
only then does the target confirm the resume (as the app would), after which the source shows
``resumed`` and the session ``handed-off``.

Layout (one lab for the module: five hosts on one bridge, subnet 198.18.0.0/24, and one host
on a second subnet behind the lab's router, which forwards TCP but drops UDP):

- h0 198.18.0.1: ``handoff-server`` (port 8443), relay included, with its relay tap on (every
  forwarded frame appended to files, for the case that proves it never sees plaintext);
- h1 198.18.0.2: "laptop" (``a``, the source of most cases);
- h2 198.18.0.3: "desk" (``b``, the target of most cases);
- h3 198.18.0.4: "tablet" (``c``, the third device of the concurrent case);
- h4 198.18.0.5: a device started for one case and stopped after it: "pocket", whose inbox
  and partial files live on a small tmpfs (disk full), or "phone", with multicast blocked;
  the relay intruder runs there too;
- h5 198.18.1.6: "remote", on the other subnet: no multicast and no UDP reach it from the
  others, only TCP (to the server).

Transfers are slowed with ``tc tbf`` on the target's link (a few MiB/s), so that a fault
lands in the middle of a transfer of some tens of MiB. Between cases (and after a failing
one) every fault is undone, stopped daemons are started again and unfinished outgoing
handoffs are cancelled, so one case cannot poison the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from handoffd.control.client import HandoffClient, Item
from handoffd.errors import ApiError
from handoffd.handoff.link import WINDOW
from tests.handoff.helpers import sha256_file, wait_nearby, wait_state, write_random
from tests.handoff.labkit import (
    LabDaemon,
    LabServer,
    MiB,
    WireMeter,
    pair_daemon,
    stop_quietly,
)
from tests.lab import Host, Lab
from tests.server.helpers import cli
from tests.support.waiting import wait_for

APP = "org.example.faults"
"""No app is registered for it anywhere: a handoff ends at ``delivered`` until the test
confirms the resume on the target, as the app would."""
# These tests follow transfers on the data channel and the relay (their wire counters, their
# faults): the receivers offer no LAN lane (tests/handoff/test_lab_lane.py has its own).
NO_LANE = {"HANDOFF_LANE_MIN_BYTES": "-1"}
RATE = "40mbit"
"""The target's link while a fault must land mid-transfer: 32 MiB take about 7 s."""
DEVICES = ("laptop", "desk", "tablet")
FAULT_KINDS = ("link_down", "loss", "rate_limit", "block_udp", "block_multicast")
ENDED = {"delivered", "resumed", "failed", "declined", "cancelled"}
OUT_ACTIVE = {"pending", "connecting", "transferring", "retrying"}


@dataclass
class World:
    """The module's lab, server and daemons: the three always running, and the extras
    a case starts and stops (by name)."""

    lab: Lab
    root: Path
    server: LabServer
    account_id: str
    daemons: dict[str, LabDaemon]
    ids: dict[str, str]
    extras: dict[str, LabDaemon] = field(default_factory=dict)
    clean_tx: dict[int, int] = field(default_factory=dict)
    """Bytes the laptop's interface sends for an uninterrupted shaped handoff, by size."""

    @property
    def tap(self) -> Path:
        """Where the server's relay tap writes what it forwards."""
        return self.root / "tap"

    def daemon(self, name: str) -> LabDaemon:
        """A daemon by name (the three, or an extra while its case runs)."""
        return self.daemons[name] if name in self.daemons else self.extras[name]

    def host(self, name: str) -> Host:
        """The lab host of a daemon."""
        host = self.daemon(name).host
        assert host is not None
        return host

    def client(self, name: str) -> HandoffClient:
        """An SDK client of a daemon."""
        return HandoffClient(self.daemon(name).socket, timeout=30)


@contextlib.contextmanager
def extra_daemon(
    world: World, name: str, host: Host, *, prepare: Callable[[Path], None] | None = None
) -> Iterator[str]:
    """A daemon ``name`` in ``host``, paired to the account for one case (``prepare`` gets its
    home before it starts); its device id. Stopped afterwards, also on failure.

    Its home is ``world.root / name``; it may exist already (a mount point, made by the case)."""
    home = world.root / name
    d = LabDaemon(home, env=dict(NO_LANE), host=host)
    world.extras[name] = d
    device_id = ""
    try:
        home.mkdir(mode=0o700, exist_ok=True)
        if prepare is not None:
            prepare(home)
        d.start()
        device_id = pair_daemon(world.server, d, "lab", name)
        world.ids[name] = device_id
        yield device_id
    finally:
        stop_quietly(d)
        world.extras.pop(name, None)
        if device_id:  # a later case may pair a new device under the same name
            cli(world.server.data, "revoke", "lab", device_id, check=False)
        shutil.rmtree(home, ignore_errors=True)


async def device_of(world: World, who: str, device_id: str) -> dict[str, Any]:
    """``who``'s view of a device (``GET /v1/devices``)."""
    async with world.client(who) as c:
        for d in (await c.request("GET", "/v1/devices"))["devices"]:
            if d["device_id"] == device_id:
                found: dict[str, Any] = d
                return found
    raise AssertionError(f"{who} does not know {device_id}")


async def wait_online(world: World, who: str, device_id: str) -> dict[str, Any]:
    """Wait until ``who`` sees ``device_id`` online at the server; its device entry."""

    async def probe() -> dict[str, Any] | None:
        with contextlib.suppress(AssertionError):
            d = await device_of(world, who, device_id)
            return d if d.get("online") else None
        return None

    seen: dict[str, Any] = await wait_for(probe, within=60, what=f"{device_id} online", every=0.2)
    return seen


async def recover(world: World) -> None:
    """Undo every fault, start stopped daemons, cancel unfinished outgoing handoffs."""
    for host in world.lab.hosts:
        for kind in FAULT_KINDS:
            world.lab.undo_faults(host, kind)
    restarted = False
    if not world.server.running():
        world.server.start()
    for d in world.daemons.values():
        if not d.running():
            d.proc = None
            d.start()
            restarted = True
    for name in DEVICES:
        async with world.client(name) as c:
            for h in await c.handoffs():
                if h.direction == "out" and h.state in OUT_ACTIVE:
                    with contextlib.suppress(ApiError):  # ended meanwhile: not-cancellable
                        await c.cancel(h.id)
    if restarted:
        for name, d in world.daemons.items():
            for other in DEVICES:
                if other != name:
                    await asyncio.to_thread(wait_nearby, d, world.ids[other])


async def restart(world: World, name: str) -> None:
    """Stop a daemon (SIGTERM) and start it again; wait until it and the others see each
    other nearby again."""
    d = world.daemons[name]
    await asyncio.to_thread(d.stop)
    await asyncio.to_thread(d.start)
    for other in DEVICES:
        if other != name:
            await asyncio.to_thread(wait_nearby, d, world.ids[other])
            await asyncio.to_thread(wait_nearby, world.daemons[other], world.ids[name])


# ---------------------------------------------------------------- sessions and their end


@dataclass
class Sent:
    """A handoff the test started: who, what, and the SHA-256 of every item by name."""

    src: str
    dst: str
    session_id: str
    handoff_id: str
    digests: dict[str, str]
    total: int


async def publish_session(
    world: World,
    src: str,
    tag: str,
    docs: dict[str, int],
    messages: int = 5,
    texts: dict[str, str] | None = None,
) -> tuple[str, dict[str, str], int]:
    """Publish a session of ``messages`` text items, ``texts`` (name: text) and documents
    (name: size) on ``src``; (session id, SHA-256 by item name, total bytes)."""
    folder = world.root / "docs"
    folder.mkdir(exist_ok=True)
    items: list[Item] = []
    digests: dict[str, str] = {}
    total = 0
    texts = {f"msg-{i:03d}.txt": f"{tag} message {i}" for i in range(messages)} | (texts or {})
    for name, text in texts.items():
        items.append(Item.of_text("message", name, text))
        digests[name] = hashlib.sha256(text.encode()).hexdigest()
        total += len(text.encode())
    for name, size in docs.items():
        path = folder / f"{tag}-{name}"
        digests[name] = await asyncio.to_thread(write_random, path, size)
        items.append(Item.of_path("document", name, path))
        total += size
    async with world.client(src) as c:
        session = await c.publish(APP, tag, context={"tag": tag}, items=items)
    return session.id, digests, total


async def send_session(
    world: World,
    src: str,
    dst: str,
    tag: str,
    docs: dict[str, int],
    messages: int = 5,
    texts: dict[str, str] | None = None,
) -> Sent:
    """Publish on ``src`` and hand the session to ``dst`` (by name)."""
    session_id, digests, total = await publish_session(world, src, tag, docs, messages, texts)
    async with world.client(src) as c:
        h = await c.send(session_id, dst)
    return Sent(src, dst, session_id, h.id, digests, total)


async def get_handoff(c: HandoffClient, handoff_id: str) -> dict[str, Any]:
    h: dict[str, Any] = await c.request("GET", f"/v1/handoffs/{handoff_id}")
    return h


async def acked_bytes(world: World, sent: Sent, at_least: int, *, path: str | None = None) -> int:
    """Wait until the source counts ``at_least`` bytes acknowledged (over ``path`` if given);
    the count then."""
    async with world.client(sent.src) as c:

        async def probe() -> int | None:
            x = await get_handoff(c, sent.handoff_id)
            assert x["state"] not in ENDED, x  # the fault must land mid-transfer
            if path is not None and x["path"] != path:
                return None
            return int(x["bytes_done"]) if x["bytes_done"] >= at_least else None

        got: int = await wait_for(probe, within=120, what=f"{at_least} B acknowledged", every=0.02)
        return got


async def session_state(world: World, sent: Sent) -> str:
    async with world.client(sent.src) as c:
        return (await c.session(sent.session_id)).state


async def finish(world: World, sent: Sent, *, within: float = 240) -> dict[str, Any]:
    """The common end of every case; the source's handoff as it was at ``delivered``.

    Delivered with every byte counted; the session still ``active`` on the source; every
    inbox file's SHA-256 equal to the source's; the target confirms the resume; the source
    then shows ``resumed`` and the session ``handed-off``; nothing left in ``partial/``."""
    target = world.daemon(sent.dst)
    async with world.client(sent.src) as s, world.client(sent.dst) as t:
        done = await wait_state(s, sent.handoff_id, ENDED, within)
        assert done["state"] == "delivered", done
        assert done["bytes_done"] == done["bytes_total"] == sent.total, done
        assert done["error"] is None, done
        wire = done["wire"]
        assert wire["bytes_already_held"] + wire["data_bytes_sent"] == sent.total, done
        # Nothing is handed off before the target resumed.
        assert (await s.session(sent.session_id)).state == "active"

        entry = await t.inbox_entry(sent.handoff_id)
        assert entry.state == "received"
        assert entry.sender.device_id == world.ids[sent.src]
        assert {i.name for i in entry.items} == set(sent.digests)
        for item in entry.items:
            assert item.sha256 == sent.digests[item.name], item
            got = await asyncio.to_thread(sha256_file, Path(item.path))
            assert got == sent.digests[item.name], (item.name, got)
        incoming = await t.handoff(sent.handoff_id)
        assert (incoming.direction, incoming.state) == ("in", "delivered")
        if done["attempts"] == 1:  # both ends agree on the path (of the same exchange)
            assert incoming.path == done["path"], (incoming, done)
        assert not (target.paths.partial / sent.handoff_id).exists()

        await t.confirm_resumed(sent.handoff_id)
        resumed = await wait_state(s, sent.handoff_id, {"resumed", "failed"}, 60)
        assert resumed["state"] == "resumed", resumed
        assert (await s.session(sent.session_id)).state == "handed-off"
        return done


# ---------------------------------------------------------------- wire bytes


async def measure_clean_tx(world: World, size: int) -> int:
    """Bytes the laptop's interface sends for an uninterrupted handoff of a ``size``-byte
    document to the desk over the shaped link (measured once per size)."""
    if size not in world.clean_tx:
        meter = WireMeter(world.host("laptop")).start()
        sent = await send_session(
            world, "laptop", "desk", f"clean-{size}", {"c.bin": size}, messages=0
        )
        done = await finish(world, sent)
        assert done["attempts"] == 1, done
        world.clean_tx[size] = meter.read()[1]
    return world.clean_tx[size]


def resend_bound(clean_tx: int, size: int) -> int:
    """The most the laptop may send for ``size`` bytes if no acknowledged byte goes twice:
    the clean cost, plus one window of unacknowledged data and 1 MiB (background traffic,
    SCTP retransmissions), at the measured bytes-on-the-wire per payload byte."""
    return clean_tx + int((WINDOW + MiB) * clean_tx / size)


@dataclass
class Pocket:
    """The "pocket" daemon, whose inbox and partial files are on a small tmpfs."""

    daemon: LabDaemon
    device_id: str
    disk: Path


TMPFS_SIZE = 320 * MiB


@dataclass
class Stick:
    """The "stick" daemon, whose whole home (state.db, config.toml, identity, the control
    socket's directory, inbox and partial files) is one small tmpfs."""

    daemon: LabDaemon
    device_id: str
    disk: Path
