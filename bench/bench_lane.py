"""The LAN lane in the network lab, on tc-tbf-shaped 1 Gbit links (needs root).

Two lab hosts, both links shaped with ``tc tbf rate 1gbit`` in and out: h0 runs the
server and "laptop" (the source), h1 "desk" (the target, no app registered: a handoff
ends at ``delivered``). Real daemons, real mDNS, real aiortc, real TLS. Measures, in
one run:

- a document handoff (default 200 MiB) — which path carried it, POST → delivered and
  transferring → delivered, MiB/s — against raw TLS 1.3 over TCP between the same two
  hosts (Python ``ssl``, 1 MiB writes), and the ratio;
- CPU seconds per 100 MiB: each daemon during the handoff, each raw TLS process;
- VmRSS of both daemons, sampled every 0.5 s during a 1 GiB handoff (growth = max - before);
- the target SIGKILLed mid-transfer on the lane → the source shows ``retrying``;
- optionally (``--profile DIR``) both daemons run under cProfile (``DIR/a.prof``,
  ``DIR/b.prof``, written when they stop), for the hot path.

    .venv/bin/python -m bench.bench_lane [--big-mib 200] [--rss-mib 1024] [--repeat 3] [--kill-mib 400]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.bench_handoff import (
    Watcher,
    cpu_seconds,
    one_handoff,
    rss_while,
    self_signed,
    watching,
)
from handoffd.control.client import HandoffClient, Item
from tests.handoff.helpers import write_random
from tests.handoff.labkit import LabDaemon, LabServer, MiB, kill_hard, pair_daemon
from tests.lab import Host, Lab
from tests.server.helpers import create_account

TLS_PORT = 7443
TLS_PEER = r"""
import resource, socket, ssl, sys, time
mode, addr, port, cert, key, nbytes = sys.argv[1:7]
nbytes = int(nbytes)
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime
if mode == "server":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert, key)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    srv = socket.create_server((addr, int(port))); print("ready", flush=True)
    conn, _ = srv.accept(); s = ctx.wrap_socket(conn, server_side=True); total = 0
    c0 = cpu()
    while total < nbytes and (b := s.recv(1 << 20)): total += len(b)
    s.sendall(b"ok"); print(total, cpu() - c0, flush=True)
else:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.load_verify_locations(cert)
    ctx.check_hostname = False; ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    s = ctx.wrap_socket(socket.create_connection((addr, int(port))))
    block = b"x" * (1 << 20); t = time.perf_counter(); left = nbytes; c0 = cpu()
    while left > 0: s.sendall(block[: min(left, len(block))]); left -= len(block)
    assert s.recv(2) == b"ok"
    print(time.perf_counter() - t, cpu() - c0, s.version(), s.cipher()[0], flush=True)
"""


def raw_tls(
    sender: Host, receiver: Host, root: Path, nbytes: int
) -> tuple[float, float, float, str]:
    """(seconds, sender CPU s, receiver CPU s, "version cipher") for ``nbytes`` over TLS."""
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
    srv_out = srv.stdout.read().split()
    srv.wait(timeout=60)
    srv.stdout.close()
    return float(out[0]), float(out[1]), float(srv_out[1]), f"{out[2]} {out[3]}"


async def dead_peer(
    ca: HandoffClient, wa: Watcher, a: LabDaemon, b: LabDaemon, b_id: str, root: Path, mib: int
) -> None:
    """The target SIGKILLed mid-transfer on the lane: seconds until the source is retrying."""
    doc = root / "kill.bin"
    await asyncio.to_thread(write_random, doc, mib * MiB)
    session = await ca.publish(
        "org.example.bench", "kill", items=[Item.of_path("document", doc.name, doc)]
    )
    h = await ca.send(session.id, b_id)
    async with asyncio.timeout(300):
        while True:
            cur = await ca.request("GET", f"/v1/handoffs/{h.id}")
            if cur["state"] not in ("pending", "connecting", "transferring"):
                raise RuntimeError(f"the handoff ended before the kill: {cur['state']}")
            if cur["path"] == "lane" and cur["bytes_done"] > 0:  # moving on the lane
                break
            await asyncio.sleep(0.02)
    t0 = time.perf_counter()
    kill_hard(b)
    took = await wa.wait(h.id, "retrying", within=120) - t0
    print(f"target SIGKILLed mid-transfer on the lane -> source retrying: {took * 1000:.0f} ms")
    await ca.cancel(h.id)
    b.start()


@dataclass
class ProfiledDaemon(LabDaemon):
    """A lab daemon, run under cProfile when ``profile`` names a directory."""

    profile: Path | None = None

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start it (under ``python -m cProfile -o DIR/<home name>.prof`` when profiling)."""
        if self.profile is None:
            return super().spawn()
        assert self.host is not None
        env = {**os.environ, **self.env}
        env.pop("HANDOFF_HOME", None)
        out = self.profile / f"{self.home.name}.prof"
        argv = [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "handoffd.daemon"]
        with self.log.open("ab") as log, self.out.open("ab") as stdout:
            self.proc = self.host.popen(
                [*argv, "--home", str(self.home)], stdout=stdout, stderr=log, env=env
            )
        return self.proc


async def main_async(
    big_mib: int,
    huge_mib: int,
    repeat: int,
    profile: Path | None,
    verbose: bool = False,
    kill_mib: int = 0,
) -> None:
    """Run the measurements and print the figures."""
    lab = Lab.create(2)
    root = Path(tempfile.mkdtemp(prefix="hn", dir="/tmp"))
    try:
        h0, h1 = lab.hosts
        for h in (h0, h1):
            h.rate_limit("1gbit")
        server = LabServer(root / "srv", host=h0).start()
        create_account(server.data, "bench")
        env = {"HANDOFF_WARM_IDLE": "0"}  # every handoff starts cold: data channel, then lane
        if profile is not None:
            await asyncio.to_thread(profile.mkdir, parents=True, exist_ok=True)
        a = ProfiledDaemon(root / "a", env=dict(env), host=h0, profile=profile)
        b = ProfiledDaemon(root / "b", env=dict(env), host=h1, profile=profile)
        for d in (a, b):
            d.home.mkdir(mode=0o700)
            d.start()
        pair_daemon(server, a, "bench", "laptop")
        b_id = pair_daemon(server, b, "bench", "desk")
        async with HandoffClient(a.socket, timeout=60) as ca, watching(ca) as wa:
            for _ in range(60):  # nearby before measuring
                if any(d.device_id == b_id and d.nearby for d in await ca.devices()):
                    break
                await asyncio.sleep(0.5)
            small = [Item.of_text("message", "m.txt", "warm-up")]
            await one_handoff(ca, wa, b_id, small)
            big = root / "big.bin"
            await asyncio.to_thread(write_random, big, big_mib * MiB)
            moved: list[float] = []

            async def on_path() -> None:
                async for event in ca.events():
                    if event.get("type") == "handoff.path" and event.get("path") == "lane":
                        moved.append(time.perf_counter())  # noqa: PERF401

            path_watch = asyncio.create_task(on_path())
            await asyncio.sleep(0.2)
            for run in range(repeat):
                cpu_a, cpu_b = cpu_seconds(a.pid), cpu_seconds(b.pid)
                moved.clear()
                t, t_tr, t_done = await one_handoff(
                    ca, wa, b_id, [Item.of_path("document", "big.bin", big)]
                )
                on_lane = f"{(moved[0] - t) * 1000:.0f} ms" if moved else "never"
                cpu_a, cpu_b = cpu_seconds(a.pid) - cpu_a, cpu_seconds(b.pid) - cpu_b
                handoffs = (await ca.request("GET", "/v1/handoffs"))["handoffs"]
                path = handoffs[0]["path"]
                tls_s, tls_ca, tls_cb, tls_what = await asyncio.to_thread(
                    raw_tls, h0, h1, root, big_mib * MiB
                )
                rate, tls_rate = big_mib / (t_done - t), big_mib / tls_s
                per = 100 / big_mib
                print(
                    f"run {run + 1}: {big_mib} MiB document over {path} (on the lane "
                    f"{on_lane} after POST): POST -> delivered "
                    f"{t_done - t:.2f} s = {rate:.1f} MiB/s (transferring -> delivered "
                    f"{t_done - t_tr:.2f} s); raw {tls_what} over TCP {tls_s:.2f} s = "
                    f"{tls_rate:.1f} MiB/s; ratio {rate / tls_rate:.3f}; CPU s per 100 MiB: "
                    f"daemons sender {cpu_a * per:.2f}, receiver {cpu_b * per:.2f}; raw TLS "
                    f"sender {tls_ca * per:.2f}, receiver {tls_cb * per:.2f}",
                    flush=True,
                )
            if verbose:
                for name, d in (("sender", a), ("receiver", b)):
                    for line in d.log_text().splitlines():
                        if "lane" in line or "connected" in line or "handoff" in line:
                            print(f"  {name}: {line[:200]}")
            path_watch.cancel()
            await asyncio.wait([path_watch])
            big.unlink()
            if huge_mib:
                huge = root / "huge.bin"
                await asyncio.to_thread(write_random, huge, huge_mib * MiB)
                (t_h, _, t_h_done), before, samples = await rss_while(
                    (a.pid, b.pid),
                    one_handoff(ca, wa, b_id, [Item.of_path("document", "huge.bin", huge)]),
                )
                grow_a = max(s[0] for s in samples) - before[0]
                grow_b = max(s[1] for s in samples) - before[1]
                print(
                    f"{huge_mib} MiB handoff ({huge_mib / (t_h_done - t_h):.1f} MiB/s, "
                    f"{len(samples)} samples): RSS growth sender {grow_a:.1f} MiB "
                    f"({before[0]:.0f} -> max {max(s[0] for s in samples):.0f}), receiver "
                    f"{grow_b:.1f} MiB ({before[1]:.0f} -> max {max(s[1] for s in samples):.0f})",
                    flush=True,
                )
            if kill_mib:
                await dead_peer(ca, wa, a, b, b_id, root, kill_mib)
        for d in (a, b):
            d.stop()
        server.stop()
    finally:
        lab.close()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--big-mib", type=int, default=200)
    parser.add_argument("--rss-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--verbose", action="store_true", help="print the daemons' lane log lines")
    parser.add_argument(
        "--kill-mib", type=int, default=400, help="document for the dead-peer measurement (0: off)"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    asyncio.run(
        main_async(
            args.big_mib, args.rss_mib, args.repeat, args.profile, args.verbose, args.kill_mib
        )
    )
    print(f"bench took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
