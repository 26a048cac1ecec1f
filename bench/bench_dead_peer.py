"""A target SIGKILLed mid-transfer on the WebRTC data channel (no lane), in the network lab
(needs root): milliseconds until the source shows ``retrying``, and the reason it gives.

Two lab hosts, the target's link shaped (``--rate``) so the transfer is still running
when the target dies; real daemons, real aiortc. Each run: a document handoff, the target
SIGKILLed once 4 MiB were acknowledged on the data channel, the time until the source's
``retrying`` event, the target restarted and the handoff cancelled.

    .venv/bin/python -m bench.bench_dead_peer [--repeat 5] [--mib 64] [--rate 40mbit]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.bench_handoff import Watcher, watching
from handoffd.control.client import HandoffClient, Item
from tests.handoff.helpers import write_random
from tests.handoff.labkit import LabDaemon, LabServer, MiB, kill_hard, pair_daemon
from tests.lab import Lab
from tests.server.helpers import create_account

NO_LANE = {"HANDOFF_LANE_MIN_BYTES": "-1", "HANDOFF_WARM_IDLE": "0"}


async def one_kill(
    ca: HandoffClient, wa: Watcher, b: LabDaemon, b_id: str, doc: Path
) -> tuple[float, str]:
    """(seconds from the SIGKILL to the source's ``retrying``, the recorded error)."""
    session = await ca.publish("org.example.bench", "kill", items=[Item.of_path("document", doc.name, doc)])  # fmt: skip
    h = await ca.send(session.id, b_id)
    async with asyncio.timeout(300):
        while True:
            cur = await ca.request("GET", f"/v1/handoffs/{h.id}")
            if cur["state"] not in ("pending", "connecting", "transferring"):
                raise RuntimeError(f"the handoff ended before the kill: {cur['state']}")
            if cur["path"] == "direct" and cur["bytes_done"] >= 4 * MiB:
                break
            await asyncio.sleep(0.02)
    t0 = time.perf_counter()
    kill_hard(b)
    took = await wa.wait(h.id, "retrying", within=120) - t0
    cur = await ca.request("GET", f"/v1/handoffs/{h.id}")
    await ca.cancel(h.id)
    b.start()
    return took, str(cur["error"]["message"])


async def main_async(repeat: int, mib: int, rate: str) -> None:
    """Run the measurements and print the figures."""
    lab = Lab.create(2)
    root = Path(tempfile.mkdtemp(prefix="hk", dir="/tmp"))
    try:
        h0, h1 = lab.hosts
        h1.rate_limit(rate)
        server = LabServer(root / "srv", host=h0).start()
        create_account(server.data, "bench")
        a = LabDaemon(root / "a", env=dict(NO_LANE), host=h0)
        b = LabDaemon(root / "b", env=dict(NO_LANE), host=h1)
        for d in (a, b):
            d.home.mkdir(mode=0o700)
            d.start()
        pair_daemon(server, a, "bench", "laptop")
        b_id = pair_daemon(server, b, "bench", "desk")
        doc = root / "kill.bin"
        await asyncio.to_thread(write_random, doc, mib * MiB)
        took: list[float] = []
        async with HandoffClient(a.socket, timeout=60) as ca, watching(ca) as wa:
            for run in range(repeat):
                for _ in range(120):  # nearby (again, after the restart) before measuring
                    if any(d.device_id == b_id and d.nearby for d in await ca.devices()):
                        break
                    await asyncio.sleep(0.5)
                s, why = await one_kill(ca, wa, b, b_id, doc)
                took.append(s)
                print(f"run {run + 1}: SIGKILL -> retrying {s * 1000:.0f} ms ({why})", flush=True)
        print(
            f"target SIGKILLed mid-transfer on the data channel -> source retrying: median "
            f"{statistics.median(took) * 1000:.0f} ms, max {max(took) * 1000:.0f} ms "
            f"({len(took)} runs)"
        )
        for d in (a, b):
            d.stop()
        server.stop()
    finally:
        lab.close()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--rate", default="40mbit", help="the target's link (tc tbf rate)")
    args = parser.parse_args()
    asyncio.run(main_async(args.repeat, args.mib, args.rate))


if __name__ == "__main__":
    main()
