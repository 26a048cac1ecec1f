"""Real daemons on two instances, through the relay, in the network lab (issue #12).

Layout: h0 198.18.0.1 runs PostgreSQL and Redis (on h0's own loopback) and two
``handoff-server`` instances (A on :8443, B on :8444, plain HTTP, sharing the
database and the bus); "laptop" on h1 is paired with and connected to A, "desk" on
h2 to B. LAN discovery off and UDP between h1 and h2 blocked: the devices find
each other only through the bus, and only the relay can carry the data; the relay
session is held by one instance and the other side's join is piped to it.

The second lab puts nginx (TLS, h0:443) in front of both instances and pairs the
devices through it; the instance holding the relay session (and the laptop's
socket) is SIGKILLed mid-transfer: the handoff is retried through the survivor and
arrives intact, and the devices are online again through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from handoffd.control.client import HandoffClient, Item
from handoffd.server import tlscert
from tests.handoff.helpers import sha256_file, wait_state, write_random
from tests.handoff.labkit import LabDaemon, LabServer, MiB
from tests.handoff.test_server_path import _online
from tests.lab import Host, Lab
from tests.lab.fixtures import require_lab
from tests.services import NGINX_MAIN, _as_user, _private_dir, pg_bin, render_site
from tests.support.waiting import wait_for

pytestmark = pytest.mark.lab

PG_PORT = 5432
REDIS_PORT = 6379
DATABASE = f"postgresql://handoff@127.0.0.1:{PG_PORT}/postgres"
BUS = f"redis://127.0.0.1:{REDIS_PORT}/0"


def _wait_accepts(host: Host, port: int, what: str, within: float = 60.0) -> None:
    """Wait until something accepts on 127.0.0.1:``port`` inside ``host``."""
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), 1).close()"
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if host.run([sys.executable, "-c", probe], check=False).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} does not accept on {host.name}:{port}")


def _server_cli(host: Host, *argv: str) -> str:
    """``handoff-server ARGV --database …`` inside ``host``; its stdout."""
    done = host.run(
        [sys.executable, "-m", "handoffd.server.cli", *argv, "--database", DATABASE], timeout=60
    )
    return done.stdout


@dataclass
class World:
    lab: Lab
    root: Path
    instances: tuple[LabServer, LabServer]
    a: LabDaemon
    b: LabDaemon
    a_id: str
    b_id: str


@contextlib.contextmanager
def _build(*, behind_nginx: bool) -> Iterator[World]:
    """The lab above; ``behind_nginx``: nginx on h0:443 in front of both instances and the
    devices pair (and connect) through it, else each device pairs with its own instance."""
    require_lab()
    lab = Lab.create(3)
    root = Path(tempfile.mkdtemp(prefix="hr", dir="/tmp"))
    pg_root = _private_dir("handoff-labpg-")
    redis_root = _private_dir("handoff-labredis-")
    try:
        h0, h1, h2 = lab.hosts
        # PostgreSQL, Redis and nginx as h0's processes (tracked by the lab, stopped by PID).
        h0.run(
            [*_as_user(), str(pg_bin() / "initdb"), "-D", str(pg_root / "data"), "-U",
             "handoff", "--auth=trust", "--encoding=UTF8", "--locale=C", "-N"],
            timeout=120,
        )  # fmt: skip
        with (pg_root / "log").open("ab") as log:
            h0.popen(
                [*_as_user(), str(pg_bin() / "postgres"), "-D", str(pg_root / "data"),
                 "-c", "listen_addresses=127.0.0.1", "-p", str(PG_PORT), "-k", str(pg_root),
                 "-c", "fsync=off", "-c", "synchronous_commit=off"],
                stdout=log, stderr=log,
            )  # fmt: skip
        with (redis_root / "log").open("ab") as log:
            h0.popen(
                [*_as_user(), shutil.which("redis-server") or "/usr/bin/redis-server",
                 "--bind", "127.0.0.1", "--port", str(REDIS_PORT), "--save", "",
                 "--appendonly", "no", "--dir", str(redis_root)],
                stdout=log, stderr=log,
            )  # fmt: skip
        _wait_accepts(h0, PG_PORT, "PostgreSQL")
        _wait_accepts(h0, REDIS_PORT, "Redis")
        extra: tuple[str, ...] = ("--insecure-http", "--database", DATABASE, "--bus", BUS)
        if behind_nginx:
            tls = tlscert.load_or_create(root / "nginx-tls", now=dt.datetime.now(dt.UTC))
            extra += (
                "--max-connections-per-address", "0",  # behind nginx every client is nginx
                "--trusted-proxy", h0.address,
                "--public-url", f"https://{h0.address}",
                "--public-fingerprint", tls.fingerprint,
            )  # fmt: skip
        instances = tuple(
            LabServer(root / f"i{i}", host=h0, port=8443 + i, extra=extra).start(timeout=90)
            for i in range(2)
        )
        if behind_nginx:
            site = render_site(
                [f"{h0.address}:{s.port}" for s in instances], 443, tls.cert_path, tls.key_path
            ).replace("listen 127.0.0.1:443 ssl;", f"listen {h0.address}:443 ssl;")
            nginx_root = root / "nginx"
            nginx_root.mkdir()
            (nginx_root / "site.conf").write_text(site)
            conf = nginx_root / "nginx.conf"
            conf.write_text(NGINX_MAIN.format(root=nginx_root, site=nginx_root / "site.conf"))
            with (nginx_root / "out.log").open("ab") as log:
                h0.popen(
                    [shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(conf),
                     "-p", str(nginx_root), "-e", str(nginx_root / "error.log")],
                    stdout=log, stderr=log,
                )  # fmt: skip
        _server_cli(h0, "account", "create", "lab", "--no-password", "--data", str(root / "cli"))
        # Relayed transfers stay on the relay (UDP is blocked but TCP is not: the desk's LAN
        # lane would take them over; the lane is tested in tests/handoff/test_lab_lane.py).
        no_lane = {"HANDOFF_LANE_MIN_BYTES": "-1"}
        daemons = (
            LabDaemon(root / "a", env=dict(no_lane), host=h1),
            LabDaemon(root / "b", env=dict(no_lane), host=h2),
        )
        ids = []
        for d, server, name in zip(daemons, instances, ("laptop", "desk"), strict=True):
            d.home.mkdir(mode=0o700)
            d.start()
            status, body = d.curl("PATCH", "/v1/settings", {"lan_discovery": False})
            assert status == 200, body
            where = () if behind_nginx else ("--server-url", server.url)
            out = _server_cli(h0, "invite", "lab", "--no-qr", *where, "--data", str(root / "cli"))
            url = next(x.split(":", 1)[1].strip() for x in out.splitlines() if x.startswith("url:"))
            status, body = d.curl("POST", "/v1/pair", {"invite": url, "name": name})
            assert status == 200, body
            ids.append(str(body["device_id"]))
        yield World(lab, root, (instances[0], instances[1]), *daemons, ids[0], ids[1])
    finally:
        lab.close()
        shutil.rmtree(pg_root, ignore_errors=True)
        shutil.rmtree(redis_root, ignore_errors=True)
        if not os.environ.get("HANDOFF_TEST_KEEP"):
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with _build(behind_nginx=False) as w:
        yield w


@pytest.fixture(scope="module")
def nginx_world() -> Iterator[World]:
    with _build(behind_nginx=True) as w:
        yield w


@pytest.mark.asyncio
async def test_relay_between_daemons_on_two_instances_udp_blocked(world: World) -> None:
    _, h1, h2 = world.lab.hosts
    doc = world.root / "relayed.bin"
    digest = await asyncio.to_thread(write_random, doc, 8 * MiB)
    blocked = world.lab.block_udp(h2, h1)
    try:
        async with (
            HandoffClient(world.a.socket, timeout=30) as a,
            HandoffClient(world.b.socket, timeout=30) as b,
        ):
            seen = await wait_for(lambda: _online(a, world.b_id), within=90, what="presence")
            assert seen is not None
            assert seen["nearby"] is False
            await wait_for(lambda: _online(b, world.a_id), within=90, what="presence")
            session = await a.publish(
                "org.example.scaleout", "Relayed across instances",
                items=[Item.of_path("document", "relayed.bin", doc)],
            )  # fmt: skip
            h = await a.send(session.id, "desk")
            done = await wait_state(a, h.id, {"delivered", "failed", "declined"}, 240)
            assert done["state"] == "delivered", done
            assert done["path"] == "relay", done
            entry = await b.inbox_entry(h.id)
            (item,) = entry.items
            assert await asyncio.to_thread(sha256_file, Path(item.path)) == digest
            assert (await b.handoff(h.id)).path == "relay"
    finally:
        blocked.undo()
    # Each daemon's socket was held by its own instance, and only there.
    online = [
        set(re.findall(r'event="device online" account=\S+ device=(\S+)', s.log.read_text()))
        for s in world.instances
    ]
    assert world.a_id in online[0] - online[1]
    assert world.b_id in online[1] - online[0]
    # The laptop opened the session on A; the desk's join through B was piped to A.
    logs = [s.log.read_text() for s in world.instances]
    assert 'event="relay session opened"' in logs[0]
    assert 'event="relay join piped"' in logs[1]


def _online_at(server: LabServer) -> list[str]:
    """The devices ``server`` logged coming online, in order."""
    return re.findall(r'event="device online" account=\S+ device=(\S+)', server.log.read_text())


@pytest.mark.asyncio
async def test_instance_sigkilled_mid_relayed_handoff(nginx_world: World) -> None:
    w = nginx_world
    _, h1, h2 = w.lab.hosts
    doc = w.root / "big.bin"
    digest = await asyncio.to_thread(write_random, doc, 32 * MiB)
    blocked = w.lab.block_udp(h2, h1)
    try:
        async with (
            HandoffClient(w.a.socket, timeout=30) as a,
            HandoffClient(w.b.socket, timeout=30) as b,
        ):
            await wait_for(lambda: _online(a, w.b_id), within=90, what="presence")
            await wait_for(lambda: _online(b, w.a_id), within=90, what="presence")
            session = await a.publish(
                "org.example.scaleout", "Through a crash",
                items=[Item.of_path("document", "big.bin", doc)],
            )  # fmt: skip
            # Slow enough that the transfer is still running when the instance dies.
            with h1.rate_limit("20mbit", direction="out"):
                h = await a.send(session.id, "desk")

                async def relayed() -> dict[str, Any] | None:
                    x: dict[str, Any] = await a.request("GET", f"/v1/handoffs/{h.id}")
                    if x["state"] in ("failed", "declined", "delivered"):
                        raise AssertionError(x)
                    return x if x["path"] == "relay" and x["bytes_done"] > 2 * MiB else None

                await wait_for(relayed, within=120, what="bytes through the relay")
                # SIGKILL the instance holding the relay session (and the laptop's socket).
                (victim,) = [
                    s for s in w.instances if 'event="relay session opened"' in s.log.read_text()
                ]
                (survivor,) = [s for s in w.instances if s is not victim]
                held = set(_online_at(victim))
                assert w.a_id in held
                before = len(_online_at(survivor))
                assert victim.proc is not None
                victim.proc.kill()
                victim.proc.wait(timeout=20)
                done = await wait_state(a, h.id, {"delivered", "failed", "declined"}, 300)
            assert done["state"] == "delivered", done
            assert done["path"] == "relay", done
            assert done["attempts"] >= 2, done  # the kill cut the relay session: retried
            entry = await b.inbox_entry(h.id)
            (item,) = entry.items
            assert await asyncio.to_thread(sha256_file, Path(item.path)) == digest

            # Every device the dead instance held came back through nginx to the survivor, and
            # the peers see each other online there.
            async def back() -> bool | None:
                return held & {w.a_id, w.b_id} <= set(_online_at(survivor)[before:]) or None

            await wait_for(back, within=60, what="reconnection to the surviving instance")
            await wait_for(lambda: _online(a, w.b_id), within=60, what="presence after the kill")
            await wait_for(lambda: _online(b, w.a_id), within=60, what="presence after the kill")
    finally:
        blocked.undo()
