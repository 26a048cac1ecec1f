"""Benchmark: wall time of `handoff status`, `handoff devices` and `handoff --version` against
`python -c pass`, measured in the same run (the target: each at most 150 ms median here).

A real daemon (unpaired; `devices` lists this device from its cache) answers `status` and
`devices`; `status` against a stopped daemon is measured too (the error path). Each command
is the venv's console script, run as a shell would (a fresh process each time).

Run: .venv/bin/python -m bench.bench_cli [--runs N]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.daemon.helpers import DaemonProcess

HANDOFF = str(Path(sys.executable).parent / "handoff")
TARGET = 0.150


def wall(argv: list[str], runs: int) -> list[float]:
    """Seconds per run of ``argv`` (a fresh process each), after one warm-up run."""
    subprocess.run(argv, capture_output=True, check=False)
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=False)
        out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    """Measure, print a table, exit 1 if a median is over the target."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hdb", dir="/tmp"))
    home = root / "a"
    home.mkdir(mode=0o700)
    daemon = DaemonProcess(home).start()
    try:
        cases = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "handoff --version": [HANDOFF, "--version"],
            "handoff status": [HANDOFF, "--home", str(home), "status"],
            "handoff devices": [HANDOFF, "--home", str(home), "devices"],
            "handoff status (no daemon)": [HANDOFF, "--home", str(root / "none"), "status"],
        }
        results = {name: wall(argv, args.runs) for name, argv in cases.items()}
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)
    base = statistics.median(results["python -c pass"])
    print(f"{'command':30} {'median':>9} {'p90':>9} {'vs python -c pass':>18}")
    over = []
    for name, times in results.items():
        med = statistics.median(times)
        p90 = sorted(times)[int(len(times) * 0.9) - 1]
        print(f"{name:30} {med * 1000:7.1f}ms {p90 * 1000:7.1f}ms {med / base:17.1f}x")
        if name.startswith("handoff") and med > TARGET:
            over.append(name)
    print(f"target: each handoff command's median <= {TARGET * 1000:.0f} ms wall")
    if over:
        print("over the target: " + ", ".join(over))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
