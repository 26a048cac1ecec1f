"""Server under load: N device WebSockets on one server on loopback.

Reports the server's RSS with N devices connected, and the signaling round
trip (A -> server -> B -> server -> A) between two devices under that load,
against the same round trip on an idle server in the same run (the ratio).

    .venv/bin/python -m bench.bench_server [--devices 1000] [--per-account 10] [--rounds 1000]
        [--insecure-http]

``--insecure-http`` runs the server as behind a TLS proxy (plain WebSockets), to
show what TLS itself costs the server per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from handoffd import identity
from handoffd.server.store import Store
from handoffd.serverlink import ServerClient, ServerLink


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_devices(data: Path, n: int, per_account: int) -> list[tuple[Ed25519PrivateKey, bytes]]:
    """N devices in accounts of ``per_account``, enrolled straight through the store."""
    store = Store.open(data)
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
            out.append((key, identity.cert_to_der(issued.device_cert)))
    finally:
        store.close()
    return out


def start_server(data: Path, insecure_http: bool) -> tuple[subprocess.Popen[str], str, str | None]:
    """A ``handoff-server serve`` child on a free loopback port: (process, url, fingerprint)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "handoffd.server.cli", "serve", "--data", str(data),
         "--listen", "127.0.0.1:0", *(["--insecure-http"] if insecure_http else [])],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
    if "url" not in fields:
        proc.kill()
        proc.wait()
        raise SystemExit(f"the server did not start: {line!r}")
    fp = fields["fingerprint"]
    return proc, fields["url"], None if fp == "none" else fp


def _ignore(online: frozenset[str]) -> None:
    del online


def _into(q: asyncio.Queue[bytes]) -> Callable[[str, bytes], None]:
    def put(sender: str, envelope: bytes) -> None:
        q.put_nowait(envelope)

    return put


async def connect_all(
    url: str, fp: str | None, devices: list[tuple[Ed25519PrivateKey, bytes]]
) -> tuple[list[ServerClient], list[ServerLink], dict[int, asyncio.Queue[bytes]]]:
    clients, links = [], []
    inboxes: dict[int, asyncio.Queue[bytes]] = {}
    for i, (key, der) in enumerate(devices):
        client = ServerClient(
            url, fingerprint=fp, device_key=key, device_cert=identity.load_cert(der)
        )
        q: asyncio.Queue[bytes] = asyncio.Queue()
        inboxes[i] = q
        link = client.connect(_ignore, _into(q))
        clients.append(client)
        links.append(link)
    for start in range(0, len(links), 50):
        batch = links[start : start + 50]
        for link in batch:
            await link.start()
        async with asyncio.timeout(120):
            await asyncio.gather(*(link.wait_connected() for link in batch))
    return clients, links, inboxes


async def round_trips(
    a: ServerLink, b: ServerLink, a_id: str, b_id: str, qa: asyncio.Queue[bytes],
    qb: asyncio.Queue[bytes], rounds: int,
) -> list[float]:  # fmt: skip
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
            assert got == payload
    finally:
        task.cancel()
    return times


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


async def run(n: int, per_account: int, rounds: int, insecure_http: bool = False) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * n + 1024)), hard))
    root = Path(tempfile.mkdtemp(prefix="hbench"))
    data = root / "server"
    try:
        t0 = time.monotonic()
        devices = make_devices(data, n, per_account)
        print(f"enrolled {n} devices in {time.monotonic() - t0:.1f} s")
        proc, url, fp = start_server(data, insecure_http)
        print(f"server {url} ({'plain WebSockets' if fp is None else 'TLS, pinned certificate'})")
        try:
            idle_rss = rss_kib(proc.pid)
            pair_clients, pair_links, pair_q = await connect_all(url, fp, devices[:2])
            ids = [identity.device_id_for(k.public_key()) for k, _ in devices[:2]]
            baseline = await round_trips(
                pair_links[0], pair_links[1], ids[0], ids[1], pair_q[0], pair_q[1], rounds
            )
            t0, cpu0, own0 = time.monotonic(), cpu_seconds(proc.pid), time.process_time()
            clients, links, _ = await connect_all(url, fp, devices[2:])
            retried = sum(1 for link in links if link.last_error is not None)
            print(
                f"connected {len(links) + 2} WebSockets in {time.monotonic() - t0:.1f} s"
                f" (server CPU {cpu_seconds(proc.pid) - cpu0:.1f} s,"
                f" bench client CPU {time.process_time() - own0:.1f} s;"
                f" {retried} needed a reconnect)"
            )
            await asyncio.sleep(2)
            loaded_rss = rss_kib(proc.pid)
            loaded = await round_trips(
                pair_links[0], pair_links[1], ids[0], ids[1], pair_q[0], pair_q[1], rounds
            )
            print(
                f"server RSS: {idle_rss / 1024:.1f} MiB idle, {loaded_rss / 1024:.1f} MiB with {n} devices"
            )
            for label, xs in (("idle server", baseline), (f"{n} devices connected", loaded)):
                print(
                    f"signal round trip, {label}: p50 {pct(xs, 0.5):.2f} ms, p99 {pct(xs, 0.99):.2f} ms,"
                    f" mean {statistics.fmean(xs):.2f} ms (n={len(xs)})"
                )
            print(f"ratio loaded/idle p50: {pct(loaded, 0.5) / pct(baseline, 0.5):.2f}")
            for link in [*links, *pair_links]:
                await link.close()
            for client in [*clients, *pair_clients]:
                await client.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--per-account", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--insecure-http", action="store_true", help="plain HTTP/WebSockets")
    args = parser.parse_args()
    asyncio.run(run(args.devices, args.per_account, args.rounds, args.insecure_http))


if __name__ == "__main__":
    main()
