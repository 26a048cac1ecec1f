"""Scale-out under load: N device WebSockets across two instances behind nginx.

Starts PostgreSQL, Redis, two ``handoff-server`` instances (plain HTTP,
``--max-connections-per-address 0``) and nginx terminating TLS in front of them
(tests/services.py, deploy/nginx.conf), all as child processes on loopback.
Pairs N real devices in accounts of ``--per-account`` through the server's
store (invite + CSR join, as ``handoff-server invite`` and a device's join do),
then opens one WebSocket per device through nginx, each authenticated with the
real challenge (handoffd.wire.auth), from this process, spread over several
127.0.0.x source addresses.

Reports the RSS of each instance per connected device, the connect rate, and
the signaling round trip (A -> instance 0 -> Redis -> instance 1 -> B and
back) between two devices on different instances with the N devices
connected, against the round trip between two devices on one idle instance in
the same run (the ratio).

    .venv/bin/python -m bench.bench_scaleout [--devices 10000] [--per-account 100]
        [--rounds 1000] [--sources 8] [--parallel 100]
"""

from __future__ import annotations

import argparse
import asyncio
import asyncio.sslproto
import contextlib
import datetime as dt
import json
import resource
import shutil
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import tests.services as services
from handoffd import identity
from handoffd.server import tlscert
from handoffd.server.store import Store
from handoffd.serverlink import ServerClient, ServerLink
from handoffd.wire import auth
from tests.services import NGINX_MAIN, NginxServer, PostgresServer, RedisServer, free_port
from tests.support.processes import ServerProcess

# The bench's own TLS client sockets (not the servers'): Python 3.11's SSLProtocol
# allocates a 256 KiB read buffer per connection, 2.5 GiB for 10,000 devices.
CLIENT_SSL_BUFFER = 16 * 1024


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def nginx_kib(pid: int) -> int:
    """VmRSS of nginx's master and its workers together, in KiB."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return rss_kib(pid) + sum(rss_kib(int(c)) for c in children)


def pct(values: list[float], p: float) -> float:
    """The ``p`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


@dataclass(frozen=True)
class Device:
    """A paired device: its key and id."""

    key: Ed25519PrivateKey
    device_id: str
    cert_der: bytes


def pair_devices(database: str, data: Path, n: int, per_account: int) -> list[Device]:
    """N devices in accounts of ``per_account``: an invite each, joined with a real CSR."""
    store = Store.open(data, database=database)
    out = []
    try:
        for i in range(n):
            if i % per_account == 0:
                account = store.create_account(f"bench{i // per_account}")
            invite = store.create_invite(account.account_id, created_by="cli")
            key = identity.generate_device_key()
            issued = store.join(
                token=invite.secrets.token,
                csr_pem=identity.csr_to_pem(identity.make_csr(key)),
                name=f"d{i}",
                platform="bench",
            )
            out.append(
                Device(
                    key,
                    identity.device_id_for(key.public_key()),
                    identity.cert_to_der(issued.device_cert),
                )
            )
    finally:
        store.close()
    return out


async def connect_device(
    session: aiohttp.ClientSession, url: str, ssl: aiohttp.Fingerprint, device: Device
) -> aiohttp.ClientWebSocketResponse:
    """One authenticated device WebSocket (challenge answered with the device key)."""
    async with asyncio.timeout(60):
        ws = await session.ws_connect(url, ssl=ssl, heartbeat=None, autoping=True)
        try:
            challenge = auth.parse_challenge(json.loads((await ws.receive()).data))
            await ws.send_str(json.dumps(auth.auth_message(device.key, challenge)))
            welcome = json.loads((await ws.receive()).data)
            if welcome.get("type") != "welcome":
                raise RuntimeError(f"no welcome: {welcome!r}")
        except BaseException:
            await ws.close()
            raise
    return ws


async def drain(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Read (and so answer pings, ignore presence) until the socket closes."""
    while not ws.closed:
        msg = await ws.receive()
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            return


def _sees(peer: str, event: asyncio.Event) -> Callable[[frozenset[str]], None]:
    def presence(online: frozenset[str]) -> None:
        if peer in online:
            event.set()

    return presence


def _into(q: asyncio.Queue[bytes]) -> Callable[[str, bytes], None]:
    def put(sender: str, envelope: bytes) -> None:
        q.put_nowait(envelope)

    return put


async def round_trips(
    pair: list[tuple[ServerLink, asyncio.Queue[bytes], str]], rounds: int
) -> list[float]:
    """A -> B -> A signaling round trips (64-byte envelopes), in ms."""
    (a, qa, _), (b, qb, b_id) = pair
    a_id = pair[0][2]

    async def echo() -> None:
        while True:
            env = await qb.get()
            await b.send_signal(a_id, env)

    task = asyncio.create_task(echo())
    times = []
    try:
        for i in range(rounds):
            payload = i.to_bytes(4, "big") * 16
            t0 = time.perf_counter()
            await a.send_signal(b_id, payload)
            async with asyncio.timeout(10):
                got = await qa.get()
            times.append((time.perf_counter() - t0) * 1000)
            if got != payload:
                raise RuntimeError("wrong envelope echoed")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return times


async def link_pair(
    urls: list[str], devices: list[Device]
) -> tuple[list[ServerClient], list[tuple[ServerLink, asyncio.Queue[bytes], str]]]:
    """Two real ServerLinks (the daemon's code), device i straight to ``urls[i]``."""
    clients, out, seen = [], [], []
    for url, dev, peer in zip(urls, devices, reversed(devices), strict=True):
        client = ServerClient(
            url, fingerprint=None, device_key=dev.key, device_cert=identity.load_cert(dev.cert_der)
        )
        q: asyncio.Queue[bytes] = asyncio.Queue()
        event = asyncio.Event()
        link = client.connect(_sees(peer.device_id, event), _into(q))
        await link.start()
        clients.append(client)
        out.append((link, q, dev.device_id))
        seen.append(event)
    async with asyncio.timeout(30):
        for link, _, _ in out:
            await link.wait_connected()
        for event in seen:  # both see each other online: the bus knows where each one is
            await event.wait()
    return clients, out


async def close_pair(
    clients: list[ServerClient], pair: list[tuple[ServerLink, asyncio.Queue[bytes], str]]
) -> None:
    for link, _, _ in pair:
        await link.close()
    for client in clients:
        await client.close()


def report(label: str, xs: list[float]) -> str:
    return (
        f"signal round trip, {label}: p50 {pct(xs, 0.5):.2f} ms, p99 {pct(xs, 0.99):.2f} ms,"
        f" mean {statistics.fmean(xs):.2f} ms (n={len(xs)})"
    )


async def run(
    n: int, per_account: int, rounds: int, sources: int, parallel: int
) -> dict[str, float]:
    """The whole bench; the figures (also printed)."""
    old_size = asyncio.sslproto.SSLProtocol.max_size
    asyncio.sslproto.SSLProtocol.max_size = CLIENT_SSL_BUFFER
    try:
        return await _run(n, per_account, rounds, sources, parallel)
    finally:
        asyncio.sslproto.SSLProtocol.max_size = old_size


async def _run(
    n: int, per_account: int, rounds: int, sources: int, parallel: int
) -> dict[str, float]:
    # nginx holds two descriptors per device (client and upstream) and inherits ours.
    want = 2 * n + 4096
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
    except (ValueError, OSError):  # not root: the hard limit is the ceiling
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, want)), hard))
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit < want // 2:
        print(f"RLIMIT_NOFILE is {limit}, {want // 2} wanted: nginx will refuse some connections")
    root = Path(tempfile.mkdtemp(prefix="hbench-scale"))
    pg = PostgresServer().init()
    redis = RedisServer().start()
    instances: list[ServerProcess] = []
    nginx: NginxServer | None = None
    figures: dict[str, float] = {}
    try:
        database = pg.create_database()
        t0 = time.monotonic()
        devices = pair_devices(database, root / "pair", n + 3, per_account)
        # three spare devices of the first account for the round trips
        spare, devices = devices[:3], devices[3:]
        print(f"paired {n + 3} devices in {time.monotonic() - t0:.1f} s")
        tls = tlscert.load_or_create(root / "nginx-tls", now=dt.datetime.now(dt.UTC))
        ports = [free_port() for _ in range(2)]
        nginx_port = free_port()
        for i, port in enumerate(ports):
            instances.append(
                ServerProcess(
                    root / f"i{i}",
                    extra=(
                        "--insecure-http", "--listen", f"127.0.0.1:{port}",
                        "--max-connections-per-address", "0",
                        "--max-connections", str(n + 1024),
                        "--trusted-proxy", "127.0.0.1",
                        "--public-url", f"https://127.0.0.1:{nginx_port}",
                        "--public-fingerprint", tls.fingerprint,
                        "--bus", redis.url,
                    ),
                    database=database,
                ).start()
            )  # fmt: skip
        nginx = NginxServer(
            [f"127.0.0.1:{p}" for p in ports], tls.cert_path, tls.key_path, port=nginx_port
        )
        # each device socket is two nginx connections (client + upstream)
        # Two workers (one per core here): each has its own descriptor limit, so an
        # unprivileged hard limit of 20,000 still holds 10,000 devices.
        main_conf = NGINX_MAIN.replace(
            "worker_connections 4096;", f"worker_connections {min(limit - 64, 2 * n + 1024)}; "
        ).replace("worker_processes 1;", f"worker_processes 2;\nworker_rlimit_nofile {limit};")
        old_main, services.NGINX_MAIN = services.NGINX_MAIN, main_conf
        try:
            nginx.start()
        finally:
            services.NGINX_MAIN = old_main
        direct = [p.url for p in instances]
        await asyncio.sleep(1)
        idle_rss = [rss_kib(p.proc.pid) for p in instances if p.proc]
        clients, pair = await link_pair([direct[0], direct[0]], spare[:2])
        baseline = await round_trips(pair, rounds)
        await close_pair(clients, pair)

        sessions = [
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, local_addr=(f"127.0.0.{2 + s}", 0))
            )
            for s in range(sources)
        ]
        ssl = aiohttp.Fingerprint(bytes.fromhex(tls.fingerprint[len("sha256:") :]))
        ws_url = f"wss://127.0.0.1:{nginx_port}/v1/ws"
        sockets: list[aiohttp.ClientWebSocketResponse] = []
        readers: list[asyncio.Task[None]] = []
        sem = asyncio.Semaphore(parallel)
        reasons: Counter[str] = Counter()

        async def one(i: int, dev: Device) -> None:
            for _attempt in range(10):
                async with sem:
                    try:
                        ws = await connect_device(sessions[i % sources], ws_url, ssl, dev)
                    except (
                        aiohttp.ClientError,
                        OSError,
                        TimeoutError,
                        RuntimeError,
                        ValueError,
                    ) as exc:
                        reasons[f"{type(exc).__name__}: {exc}"[:120]] += 1
                        ws = None
                if ws is None:
                    await asyncio.sleep(1)
                    continue
                sockets.append(ws)
                readers.append(asyncio.create_task(drain(ws)))
                return
            raise RuntimeError(f"device {i} could not connect: {dict(reasons)}")

        try:
            t0 = time.monotonic()
            await asyncio.gather(*(one(i, d) for i, d in enumerate(devices)))
            connect_s = time.monotonic() - t0
            print(
                f"connected {n} WebSockets through nginx in {connect_s:.1f} s"
                f" ({n / connect_s:.0f}/s, {sum(reasons.values())} attempts retried)"
            )
            for reason, count in reasons.most_common(5):
                print(f"  retried {count}x: {reason}")
            await asyncio.sleep(3)
            loaded_rss = [rss_kib(p.proc.pid) for p in instances if p.proc]
            nginx_rss = nginx_kib(nginx.proc.pid) if nginx.proc else 0
            clients, pair = await link_pair(direct, spare[1:3])
            loaded = await round_trips(pair, rounds)
            await close_pair(clients, pair)
            per_device = [
                (lo - idle) / (n / 2) for lo, idle in zip(loaded_rss, idle_rss, strict=True)
            ]
            for i, (idle, lo, pd) in enumerate(zip(idle_rss, loaded_rss, per_device, strict=True)):
                print(
                    f"instance {i} RSS: {idle / 1024:.1f} MiB idle, {lo / 1024:.1f} MiB loaded;"
                    f" {pd:.1f} KiB per device (n/2 each)"
                )
            print(f"nginx RSS (master and workers) {nginx_rss / 1024:.1f} MiB")
            print(report("two devices on one idle instance", baseline))
            print(report(f"devices on different instances, {n} connected", loaded))
            ratio = pct(loaded, 0.99) / pct(baseline, 0.99)
            print(f"ratio loaded cross-instance / idle one instance: p50 "
                  f"{pct(loaded, 0.5) / pct(baseline, 0.5):.2f}, p99 {ratio:.2f}")  # fmt: skip
            figures = {
                "devices": float(len(sockets)),
                "connect_s": connect_s,
                "per_device_kib": max(per_device),
                "idle_p50": pct(baseline, 0.5),
                "idle_p99": pct(baseline, 0.99),
                "loaded_p50": pct(loaded, 0.5),
                "loaded_p99": pct(loaded, 0.99),
            }
            print(
                f"goals: RSS/device <= 40 KiB: {'met' if max(per_device) <= 40 else 'NOT met'};"
                f" p99 <= 50 ms: {'met' if pct(loaded, 0.99) <= 50 else 'NOT met'}"
            )
        finally:
            for ws in sockets:
                with contextlib.suppress(Exception):
                    await ws.close()
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            for session in sessions:
                await session.close()
    except BaseException:
        if nginx is not None and (nginx.root / "error.log").exists():
            errors = [
                ln
                for ln in (nginx.root / "error.log").read_text().splitlines()
                if "[error]" in ln or "[alert]" in ln or "[crit]" in ln
            ]
            print("nginx errors (last 5):", *errors[-5:], sep="\n  ")
        raise
    finally:
        if nginx is not None:
            nginx.stop()
        for proc in instances:
            proc.stop()
        redis.destroy()
        pg.destroy()
        shutil.rmtree(root, ignore_errors=True)
    return figures


def run_sync(
    *, devices: int, per_account: int, rounds: int, sources: int, parallel: int
) -> dict[str, float]:
    """Run the bench in a new event loop; the figures."""
    return asyncio.run(run(devices, per_account, rounds, sources, parallel))


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10000)
    parser.add_argument("--per-account", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--sources", type=int, default=8, help="127.0.0.x source addresses")
    parser.add_argument("--parallel", type=int, default=100, help="handshakes in flight")
    args = parser.parse_args()
    asyncio.run(run(args.devices, args.per_account, args.rounds, args.sources, args.parallel))


if __name__ == "__main__":
    main()
