"""LAN handoff in the network lab, on a tc-tbf-shaped 1 Gbit link (needs root).

Two lab hosts, both shaped with ``tc tbf rate 1gbit`` in and out: h0 runs the
server and "laptop" (the source), h1 runs "desk" (the target, no app
registered, so a handoff ends at ``delivered``). Real daemons, real mDNS, real
aiortc. Measures, in one run:

- discovery: pairing → peer nearby (first time), and a paired daemon's restart
  (process start) → it lists the peer nearby / the peer lists it nearby;
- handoff latency of a small session (5 messages), POST /v1/handoffs → the
  ``delivered`` event on the source, cold (``HANDOFF_WARM_IDLE=0``: a new
  authenticated WebRTC connection each time) and warm (the kept link), p50/p95; each run
  starts once the previous one's "kept in the inbox" notice reached the source (a quiet
  pair, as for a person), and warm once more back to back (each run meets the previous
  one's notice: a signed envelope over a new signaling connection);
- throughput of one document (default 200 MiB) against raw TLS over TCP between
  the same two hosts in the same run (Python ``ssl``, a throwaway self-signed
  certificate), and the ratio; the daemons' CPU time during the transfer;
- VmRSS of both daemons, sampled every 0.5 s during a 1 GiB transfer.

    .venv/bin/python -m bench.bench_handoff [--runs 20] [--big-mib 200] [--rss-mib 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from handoffd import selfsigned
from handoffd.control.client import HandoffClient, Item
from tests.handoff.helpers import write_random
from tests.handoff.labkit import LabDaemon, LabServer, MiB, pair_daemon
from tests.lab import Host, Lab
from tests.server.helpers import create_account

T = TypeVar("T")
TLS_PORT = 7443
TLS_PEER = r"""
import socket, ssl, sys, time
mode, addr, port, cert, key, nbytes = sys.argv[1:7]
nbytes = int(nbytes)
if mode == "server":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert, key)
    srv = socket.create_server((addr, int(port))); print("ready", flush=True)
    conn, _ = srv.accept(); s = ctx.wrap_socket(conn, server_side=True); total = 0
    while total < nbytes and (b := s.recv(1 << 20)): total += len(b)
    s.sendall(b"ok"); print(total, flush=True)
else:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.load_verify_locations(cert)
    ctx.check_hostname = False
    s = ctx.wrap_socket(socket.create_connection((addr, int(port))))
    block = b"x" * (1 << 20); t = time.perf_counter(); left = nbytes
    while left > 0: s.sendall(block[: min(left, len(block))]); left -= len(block)
    assert s.recv(2) == b"ok"; print(time.perf_counter() - t, s.version(), s.cipher()[0], flush=True)
"""


def pct(xs: list[float], p: float) -> float:
    """The ``p`` quantile (nearest rank) of ``xs``."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p * len(s) + 0.5) - 1))]


def ms(xs: list[float]) -> str:
    """p50/p95/mean of seconds, in ms."""
    return (
        f"p50 {pct(xs, 0.5) * 1000:.0f} ms, p95 {pct(xs, 0.95) * 1000:.0f} ms "
        f"(n = {len(xs)}, mean {statistics.fmean(xs) * 1000:.0f} ms, "
        f"max {max(xs) * 1000:.0f} ms)"
    )


def rss_mib(pid: int) -> float:
    """VmRSS of ``pid`` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_signed(root: Path) -> tuple[Path, Path]:
    """A throwaway P-256 certificate and key for the raw TLS baseline."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = dt.datetime.now(dt.UTC)
    cert = selfsigned.self_signed(
        key, name, not_before=now - dt.timedelta(hours=1), not_after=now + dt.timedelta(days=1)
    )
    cp, kp = root / "tls.crt", root / "tls.key"
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cp, kp


def raw_tls(sender: Host, receiver: Host, root: Path, nbytes: int) -> tuple[float, str]:
    """Seconds to push ``nbytes`` over one TLS connection sender → receiver; the TLS version."""
    cert, key = self_signed(root)
    script = root / "tlspeer.py"
    script.write_text(TLS_PEER)
    common = [str(cert), str(key), str(nbytes)]
    srv = receiver.popen(
        [sys.executable, str(script), "server", receiver.address, str(TLS_PORT), *common],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert srv.stdout is not None
    if srv.stdout.readline().strip() != "ready":
        raise RuntimeError("the TLS baseline server did not start")
    argv = [sys.executable, str(script), "client", receiver.address, str(TLS_PORT), *common]
    out = sender.run(argv, timeout=900).stdout.split()
    srv.wait(timeout=60)
    srv.stdout.close()
    return float(out[0]), f"{out[1]} {out[2]}"


# ---------------------------------------------------------------- events


@dataclass
class Watcher:
    """Collects a daemon's events; waits for a handoff to reach a state (monotonic stamps)."""

    client: HandoffClient
    seen: dict[tuple[str, str], float] = field(default_factory=dict)
    nearby: dict[str, float] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        """Consume the event stream until cancelled."""
        async for event in self.client.events():
            now = time.perf_counter()
            kind = event.get("type")
            if kind == "handoff.state":
                self.seen.setdefault((event["handoff_id"], event["state"]), now)
            elif kind == "handoff.kept":  # the target's notice: its follow-up work is done
                self.seen.setdefault((event["handoff_id"], "kept"), now)
            elif kind == "device.nearby":
                self.nearby[event["device_id"]] = now
            self.changed.set()

    async def wait(self, handoff_id: str, state: str, within: float = 900) -> float:
        """When ``handoff_id`` reached ``state``; RuntimeError if it failed or declined."""
        async with asyncio.timeout(within):
            while True:
                self.changed.clear()
                if (handoff_id, state) in self.seen:
                    return self.seen[(handoff_id, state)]
                for bad in ("failed", "declined", "cancelled"):
                    if (handoff_id, bad) in self.seen:
                        h = await self.client.request("GET", f"/v1/handoffs/{handoff_id}")
                        raise RuntimeError(f"handoff {bad}: {h['error']}")
                await self.changed.wait()


@contextlib.asynccontextmanager
async def watching(client: HandoffClient) -> AsyncIterator[Watcher]:
    """A Watcher running for the duration of the block."""
    w = Watcher(client)
    task = asyncio.create_task(w.run())
    await asyncio.sleep(0.2)  # subscribed before anything is measured
    try:
        yield w
    finally:
        task.cancel()
        await asyncio.wait([task])  # our own cancellation still goes through


async def rss_while(
    pids: tuple[int, int], work: Awaitable[T]
) -> tuple[T, tuple[float, float], list[tuple[float, float]]]:
    """Run ``work`` while sampling both processes' VmRSS every 0.5 s: its result, the RSS
    before it, and the samples."""
    before = (rss_mib(pids[0]), rss_mib(pids[1]))
    samples: list[tuple[float, float]] = []
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            samples.append((rss_mib(pids[0]), rss_mib(pids[1])))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    sampler = asyncio.create_task(sample())
    try:
        result = await work
    finally:
        stop.set()
        await sampler
    return result, before, samples


async def one_handoff(
    a: HandoffClient,
    w: Watcher,
    target: str,
    items: list[Item],
    app: str = "org.example.bench",
    *,
    settle: bool = False,
) -> tuple[float, float, float]:
    """POST → transferring → delivered; (t_post, t_transferring, t_delivered), perf_counter.

    ``settle``: then wait (up to 5 s) for the target's "kept in the inbox" notice, so the next
    run starts on a quiet pair, as a person's next handoff would."""
    session = await a.publish(app, "bench", items=items)
    t = time.perf_counter()
    h = await a.send(session.id, target)
    delivered = await w.wait(h.id, "delivered")
    if settle:
        with contextlib.suppress(TimeoutError):
            await w.wait(h.id, "kept", within=5)
    return t, w.seen.get((h.id, "transferring"), t), delivered


# ---------------------------------------------------------------- discovery


async def nearby_in(d: LabDaemon, other: str, since: float, within: float = 60) -> float:
    """Seconds from ``since`` until ``d`` lists ``other`` nearby (polled every 20 ms)."""
    async with HandoffClient(d.socket, timeout=10) as c:
        deadline = time.perf_counter() + within
        while time.perf_counter() < deadline:
            with contextlib.suppress(Exception):
                for dev in await c.devices():
                    if dev.device_id == other and dev.nearby:
                        return time.perf_counter() - since
            await asyncio.sleep(0.02)
    raise RuntimeError(f"{other} never became nearby")


async def main_async(runs: int, big_mib: int, huge_mib: int, restarts: int) -> None:
    """Run every measurement and print the figures."""
    lab = Lab.create(2)
    root = Path(tempfile.mkdtemp(prefix="hb", dir="/tmp"))
    try:
        h0, h1 = lab.hosts
        for h in (h0, h1):
            h.rate_limit("1gbit")  # both directions of both links
        server = LabServer(root / "srv", host=h0).start()
        create_account(server.data, "bench")
        cold_env = {"HANDOFF_WARM_IDLE": "0"}
        a = LabDaemon(root / "a", env=dict(cold_env), host=h0)
        b = LabDaemon(root / "b", env=dict(cold_env), host=h1)
        for d in (a, b):
            d.home.mkdir(mode=0o700)
            d.start()
        a_id = pair_daemon(server, a, "bench", "laptop")
        b_id = pair_daemon(server, b, "bench", "desk")
        t_paired = time.perf_counter()
        first_nearby = await nearby_in(a, b_id, t_paired)
        await nearby_in(b, a_id, t_paired)

        # Discovery after a restart of a paired daemon (the everyday case).
        own: list[float] = []
        peer: list[float] = []
        async with HandoffClient(a.socket, timeout=30) as ca:
            for _ in range(restarts):
                b.stop()
                await asyncio.sleep(1.0)  # b's goodbye reached a: it is "gone" there
                async with watching(ca) as wa:
                    wa.nearby.pop(b_id, None)
                    t0 = time.perf_counter()
                    b.start()
                    own.append(await nearby_in(b, a_id, t0))
                    async with asyncio.timeout(60):
                        while b_id not in wa.nearby:
                            wa.changed.clear()
                            await wa.changed.wait()
                    peer.append(wa.nearby[b_id] - t0)

        small = [Item.of_text("message", f"m{i}.txt", f"message {i}") for i in range(5)]

        # Cold: HANDOFF_WARM_IDLE=0, no link is ever reused.
        async with HandoffClient(a.socket, timeout=60) as ca, watching(ca) as wa:
            await one_handoff(ca, wa, b_id, small)  # warm-up of both processes
            cold = []
            for _ in range(runs):
                t, _, done = await one_handoff(ca, wa, b_id, small, settle=True)
                cold.append(done - t)

        # Warm: the same daemons restarted with the default idle time (60 s).
        for d in (a, b):
            d.stop()
            d.env = {}
            d.start()
        await nearby_in(a, b_id, time.perf_counter())
        async with HandoffClient(a.socket, timeout=60) as ca, watching(ca) as wa:
            await one_handoff(ca, wa, b_id, small)  # opens the link
            warm = []
            for _ in range(runs):
                t, _, done = await one_handoff(ca, wa, b_id, small, settle=True)
                warm.append(done - t)
            back_to_back = []  # the next one starts at once: it meets the last one's notice
            for _ in range(runs):
                t, _, done = await one_handoff(ca, wa, b_id, small)
                back_to_back.append(done - t)
            a_log = a.log_text()
            reused = a_log.count("reusing a warm link")

            big = root / "big.bin"
            await asyncio.to_thread(write_random, big, big_mib * MiB)
            cpu_a, cpu_b = cpu_seconds(a.pid), cpu_seconds(b.pid)
            t, t_tr, t_done = await one_handoff(
                ca, wa, b_id, [Item.of_path("document", "big.bin", big)]
            )
            cpu_a, cpu_b = cpu_seconds(a.pid) - cpu_a, cpu_seconds(b.pid) - cpu_b
            transfer_s = t_done - t_tr
            tls_s, tls_what = await asyncio.to_thread(raw_tls, h0, h1, root, big_mib * MiB)
            big.unlink()

            huge = root / "huge.bin"
            await asyncio.to_thread(write_random, huge, huge_mib * MiB)
            (t_h, t_h_tr, t_h_done), before, samples = await rss_while(
                (a.pid, b.pid),
                one_handoff(ca, wa, b_id, [Item.of_path("document", "huge.bin", huge)]),
            )
            after = (rss_mib(a.pid), rss_mib(b.pid))

        print(f"discovery, first pairing -> peer nearby: {first_nearby * 1000:.0f} ms")
        print(f"discovery, paired daemon restarted -> it lists the peer nearby: {ms(own)}")
        print(f"discovery, paired daemon restarted -> the peer lists it nearby: {ms(peer)}")
        print(f"small session (5 messages) cold: {ms(cold)}")
        print(f"small session (5 messages) warm: {ms(warm)} (warm link reused {reused} times)")
        print(f"small session (5 messages) warm, back to back: {ms(back_to_back)}")
        rate, tls_rate = big_mib / transfer_s, big_mib / tls_s
        print(
            f"{big_mib} MiB document: handoff {rate:.1f} MiB/s (transferring -> delivered "
            f"{transfer_s:.1f} s; POST -> delivered {t_done - t:.1f} s), raw {tls_what} "
            f"over TCP {tls_rate:.1f} MiB/s, ratio {rate / tls_rate:.3f}; "
            f"CPU during the handoff: sender {cpu_a:.1f} s, receiver {cpu_b:.1f} s"
        )
        print(
            f"{huge_mib} MiB transfer ({huge_mib / (t_h_done - t_h_tr):.1f} MiB/s, "
            f"{t_h_done - t_h:.0f} s, {len(samples)} samples): RSS sender "
            f"{before[0]:.0f} -> max {max(s[0] for s in samples):.0f} -> {after[0]:.0f} MiB, "
            f"receiver {before[1]:.0f} -> max {max(s[1] for s in samples):.0f} -> "
            f"{after[1]:.0f} MiB"
        )
        print(f"load average at the end: {os.getloadavg()}")
        for d in (a, b):
            d.stop()
        server.stop()
    finally:
        lab.close()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--big-mib", type=int, default=200)
    parser.add_argument("--rss-mib", type=int, default=1024)
    parser.add_argument("--restarts", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main_async(args.runs, args.big_mib, args.rss_mib, args.restarts))


if __name__ == "__main__":
    main()
