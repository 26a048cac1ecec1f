"""Benchmark: handoffd idle RSS and control API latency (1,000 GET /v1/status on its socket).

Run: .venv/bin/python -m bench.bench_control [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from tests.daemon.helpers import DaemonProcess


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def latencies(socket: Path, n: int) -> list[float]:
    """Seconds per GET /v1/status on one keep-alive connection."""
    out: list[float] = []
    connector = aiohttp.UnixConnector(path=str(socket))
    async with aiohttp.ClientSession(connector=connector, base_url="http://handoff") as s:
        for _ in range(50):  # warm-up
            async with s.get("/v1/status") as r:
                await r.read()
        for _ in range(n):
            t0 = time.perf_counter()
            async with s.get("/v1/status") as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"status {r.status}")
            out.append(time.perf_counter() - t0)
    return out


def curl_latency(socket: Path, n: int) -> list[float]:
    """Seconds per request with a fresh curl process each time (what a shell script sees)."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(
            [
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "--unix-socket",
                str(socket),
                "http://handoff/v1/status",
            ],
            check=True,
        )
        out.append(time.perf_counter() - t0)
    return out


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) in milliseconds."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> int:
    """Start a daemon on a temp home, measure, print."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hdb", dir="/tmp"))
    home = root / "h"
    home.mkdir(mode=0o700)
    daemon = DaemonProcess(home)
    try:
        daemon.start()
        assert daemon.proc is not None
        time.sleep(2.0)  # let start-up settle
        idle = rss_kib(daemon.proc.pid)
        lat = asyncio.run(latencies(daemon.socket, args.requests))
        after = rss_kib(daemon.proc.pid)
        curl = curl_latency(daemon.socket, 50)
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"python {sys.version.split()[0]}")
    print(
        f"idle RSS: {idle / 1024:.1f} MiB (after {args.requests} requests: {after / 1024:.1f} MiB)"
    )
    print(
        f"GET /v1/status, one keep-alive connection, n={args.requests}: "
        f"p50 {pct(lat, 0.5):.2f} ms, p99 {pct(lat, 0.99):.2f} ms, "
        f"mean {statistics.fmean(lat) * 1000:.2f} ms"
    )
    print(
        f"GET /v1/status, a new curl process each, n=50: p50 {pct(curl, 0.5):.2f} ms, p99 {pct(curl, 0.99):.2f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
