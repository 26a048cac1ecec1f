"""Handoff with UDP blocked between the two devices (through the relay), in the network lab.

Needs root (network namespaces). Three lab hosts, each link shaped with ``tc tbf rate 1gbit`` in
and out: h0 runs ``handoff-server`` (relay included), h1 "laptop" (the source), h2 "desk" (the
target, no app registered, so a handoff ends at ``delivered``). Real daemons, real mDNS, real
aiortc, cold (``HANDOFF_WARM_IDLE=0``: every handoff connects afresh), the engine's default head
start for the direct path (``HANDOFF_DIRECT_HEAD_START``, 1.75 s). "Blocked" is
``lab.block_udp(h2, h1)``: UDP dropped between the two devices only; both still reach the server
over TCP and the laptop still sees the desk on mDNS, so the direct dialer does try (its offer
reaches the desk, no ICE check gets through) and the relay wins after the head start.

Measures, in one run:

- a small session (5 messages), POST /v1/handoffs → the ``delivered`` event on the source's event
  stream, UDP blocked and UDP open interleaved run by run, p50/p95 and the ratio;
- for the blocked runs, where the time goes, from the server's and the source's logs (wall
  clock, same machine): POST → the server opens the relay session (the head start), → both
  sides joined, → the relay channel authenticated at the source (TLS 1.3 and hello inside the
  pipe), → ``transferring`` → ``delivered``; for the open runs, POST → the direct channel;
- one document (default 200 MiB) through the relay (UDP blocked), through the direct path (UDP
  open) and raw TLS over TCP from h1 to h2, in the same run; CPU time of the three processes
  and the bytes that left the laptop's interface.

    .venv/bin/python -m bench.bench_relay_handoff [--runs 20] [--big-mib 200] [--relay-cap 64]
        [--head-start SECONDS] [--keep]

The server's cap on relays per account is raised from 8 to 64 by default: after ``delivered``
the sender keeps its link for up to 30 s waiting for ``resumed`` (no app confirms here), so
back-to-back cold runs hold one relay session each; with the default cap the 9th relayed
handoff within 30 s is refused ``relay-too-many`` and waits for a retry
(``--relay-cap 0`` shows it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.bench_handoff import Watcher, cpu_seconds, ms, nearby_in, pct, raw_tls, watching
from handoffd.control.client import HandoffClient, Item
from tests.handoff.helpers import write_random
from tests.handoff.labkit import LabDaemon, LabServer, MiB, WireMeter, pair_daemon
from tests.lab import Fault, Lab
from tests.server.helpers import create_account

APP = "org.example.bench"
SMALL = [Item.of_text("message", f"m{i}.txt", f"message {i}") for i in range(5)]


@dataclass(frozen=True)
class Run:
    """One handoff: its id, path, attempts, and when things happened (perf_counter; wall clock
    at the POST)."""

    handoff_id: str
    path: str
    attempts: int
    wall: float
    post: float
    transferring: float
    delivered: float

    def at(self, perf: float) -> float:
        """Wall-clock time of the perf_counter stamp ``perf``."""
        return self.wall + (perf - self.post)

    @property
    def seconds(self) -> float:
        """POST → delivered."""
        return self.delivered - self.post


async def timed(a: HandoffClient, w: Watcher, target: str, items: list[Item]) -> Run:
    """Publish ``items``, hand them to ``target``, wait for ``delivered``."""
    session = await a.publish(APP, "bench", items=items)
    wall, post = time.time(), time.perf_counter()
    h = await a.send(session.id, target)
    delivered = await w.wait(h.id, "delivered")
    done = await a.handoff(h.id)
    transferring = w.seen.get((h.id, "transferring"), post)
    return Run(h.id, done.path or "?", done.attempts, wall, post, transferring, delivered)


# ---------------------------------------------------------------- logs


def daemon_times(text: str, *needles: str) -> list[float]:
    """Wall-clock times of the handoffd log lines holding every one of ``needles``.

    The daemon stamps lines with local time to the millisecond (``2025-01-02 03:04:05,678``)."""
    out = []
    for line in text.splitlines():
        if all(n in line for n in needles):
            with contextlib.suppress(ValueError):
                base = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
                out.append(base + int(line[20:23]) / 1000)
    return out


def server_times(text: str, event: str) -> list[float]:
    """Wall-clock times of the handoff-server log lines of ``event`` (``ts=<ISO, UTC> ...``)."""
    needle = f'event="{event}"'
    out = []
    for line in text.splitlines():
        if needle in line and line.startswith("ts="):
            with contextlib.suppress(ValueError):
                out.append(dt.datetime.fromisoformat(line.split(" ", 1)[0][3:]).timestamp())
    return out


def log_lines(text: str, run: Run) -> list[str]:
    """The handoffd log lines stamped between ``run``'s POST and its delivery."""
    end = run.at(run.delivered) + 0.01
    return [
        line
        for line in text.splitlines()
        if (t := daemon_times(line, "")) and run.wall - 0.001 <= t[0] <= end
    ]


def first_in(times: list[float], run: Run) -> float | None:
    """Seconds after ``run``'s POST of the first time inside it (log stamps are truncated to
    the millisecond, hence the 1 ms of slack before the POST)."""
    end = run.at(run.delivered) + 0.01
    inside = [t for t in times if run.wall - 0.001 <= t <= end]
    return min(inside) - run.wall if inside else None


def stage(values: Sequence[float | None]) -> str:
    """p50/p95 in ms of the values found (and how many were not)."""
    found = [v for v in values if v is not None]
    if not found:
        return "not found"
    missing = len(values) - len(found)
    text = f"p50 {pct(found, 0.5) * 1000:.0f} ms, p95 {pct(found, 0.95) * 1000:.0f} ms"
    return text + (f" ({missing} runs without it)" if missing else "")


# ---------------------------------------------------------------- the bench


async def main_async(
    runs: int, big_mib: int, relay_cap: int, head_start: float | None, keep: bool
) -> None:
    """Run every measurement and print the figures."""
    print(f"load average at the start: {os.getloadavg()}")
    if relay_cap:
        # The server reads its relay limits from the environment it inherits (docs/relay.md).
        os.environ["HANDOFF_RELAY_MAX_PER_ACCOUNT"] = str(relay_cap)
    print(f"server's cap on relays per account: {relay_cap or 'default'}")
    print(f"direct head start: {'default' if head_start is None else f'{head_start} s'}")
    lab = Lab.create(3)
    root = Path(tempfile.mkdtemp(prefix="hr", dir="/tmp"))
    try:
        h0, h1, h2 = lab.hosts
        for h in (h0, h1, h2):
            h.rate_limit("1gbit")  # both directions of every link
        server = LabServer(root / "srv", host=h0).start()
        assert server.proc is not None
        create_account(server.data, "bench")
        cold_env = {"HANDOFF_WARM_IDLE": "0"}
        if head_start is not None:
            cold_env["HANDOFF_DIRECT_HEAD_START"] = str(head_start)
        a = LabDaemon(root / "a", env=dict(cold_env), host=h1)
        b = LabDaemon(root / "b", env=dict(cold_env), host=h2)
        for d in (a, b):
            d.home.mkdir(mode=0o700)
            d.start()
        a_id = pair_daemon(server, a, "bench", "laptop")
        b_id = pair_daemon(server, b, "bench", "desk")
        await nearby_in(a, b_id, time.perf_counter())
        await nearby_in(b, a_id, time.perf_counter())

        def blocked() -> Fault:
            return lab.block_udp(h2, h1)

        async with HandoffClient(a.socket, timeout=60) as ca, watching(ca) as wa:
            await timed(ca, wa, b_id, SMALL)  # warm-up of both processes, both paths
            with blocked():
                await timed(ca, wa, b_id, SMALL)
            relayed: list[Run] = []
            direct: list[Run] = []
            for i in range(runs):
                for udp_blocked in (True, False) if i % 2 == 0 else (False, True):
                    if udp_blocked:
                        with blocked():
                            relayed.append(await timed(ca, wa, b_id, SMALL))
                    else:
                        direct.append(await timed(ca, wa, b_id, SMALL))

            # One document each way, then raw TLS over the same links.
            pids = (a.pid, b.pid, server.proc.pid)
            big: dict[str, tuple[Run, tuple[float, ...], tuple[int, int]]] = {}
            for name in ("relay", "direct"):
                doc = root / f"{name}.bin"
                await asyncio.to_thread(write_random, doc, big_mib * MiB)
                item = [Item.of_path("document", doc.name, doc)]
                cpu0 = [cpu_seconds(p) for p in pids]
                meter = WireMeter(h1).start()
                with blocked() if name == "relay" else contextlib.nullcontext():
                    run = await timed(ca, wa, b_id, item)
                wire = meter.read()
                cpu = tuple(cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True))
                big[name] = (run, cpu, wire)
                doc.unlink()
            tls_s, tls_what = await asyncio.to_thread(raw_tls, h1, h2, root, big_mib * MiB)

        a_log, s_log = a.log_text(), server.log.read_text(errors="replace")
        marks = {
            "relay session opened at the server": server_times(s_log, "relay session opened"),
            "both sides joined (relay-start)": server_times(s_log, "relay session started"),
            "relay channel authenticated (source)": daemon_times(
                a_log, "relay channel authenticated", "role=client"
            ),
            "connector returned (path=relay)": daemon_times(
                a_log, "connector: connected", "path=relay"
            ),
        }
        via_direct = daemon_times(a_log, "connector: connected", "path=direct")
        steps: dict[str, list[float | None]] = {
            what: [first_in(times, r) for r in relayed] for what, times in marks.items()
        }
        steps["transferring (event)"] = [r.transferring - r.post for r in relayed]
        steps["delivered (event)"] = [r.seconds for r in relayed]

        t_blocked = [r.seconds for r in relayed]
        t_open = [r.seconds for r in direct]
        print(f"small session (5 messages), cold, UDP blocked: {ms(t_blocked)}")
        print(f"small session (5 messages), cold, UDP open: {ms(t_open)}")
        print(
            f"ratio blocked / open: p50 {pct(t_blocked, 0.5) / pct(t_open, 0.5):.1f}, "
            f"p95 {pct(t_blocked, 0.95) / pct(t_open, 0.95):.1f}"
        )
        paths = ("relay", "direct")
        print(
            "paths taken: blocked "
            + ", ".join(f"{p} {sum(r.path == p for r in relayed)}" for p in paths)
            + "; open "
            + ", ".join(f"{p} {sum(r.path == p for r in direct)}" for p in paths)
        )
        print("UDP blocked, time from the POST (server log, source log, source events):")
        for what, values in steps.items():
            print(f"  {what}: {stage(values)}")
        names = list(steps)
        for before, after in itertools.pairwise(names):
            gaps = [
                y - x
                for x, y in zip(steps[before], steps[after], strict=True)
                if x is not None and y is not None
            ]
            if gaps:
                print(f"  step {before} -> {after}: median {statistics.median(gaps) * 1000:.0f} ms")
        print("UDP open, time from the POST:")
        print(
            f"  connector returned (path=direct): {stage([first_in(via_direct, r) for r in direct])}"
        )
        opened = marks["relay session opened at the server"]
        in_open = sum(first_in(opened, r) is not None for r in direct)
        print(f"  relay sessions opened during the open runs: {in_open}")
        slow = [
            (kind, r)
            for kind, rs, p50 in (
                ("blocked", relayed, pct(t_blocked, 0.5)),
                ("open", direct, pct(t_open, 0.5)),
            )
            for r in rs
            if r.attempts > 1 or r.seconds > 3 * p50
        ]
        for kind, r in slow:
            print(f"outlier, UDP {kind}: {r.seconds:.2f} s, attempts {r.attempts}, path {r.path}")
            for line in [x for x in log_lines(a_log, r) if " handoffd." in x][:20]:
                print(f"    laptop: {line[:240]}")
        print(
            f"laptop's path upgrader, whole run: {a_log.count('upgrade attempt failed')} failed "
            f"attempts, {a_log.count('a better path is ready')} direct channels made, "
            f"{a_log.count('transfer moves to a better path')} transfers moved to them"
        )
        tls_rate = big_mib / tls_s
        for name, (run, cpu, (rx, tx)) in big.items():
            rate = big_mib / (run.delivered - run.transferring)
            print(
                f"{big_mib} MiB document, {name} (path {run.path}): {rate:.1f} MiB/s "
                f"(transferring -> delivered {run.delivered - run.transferring:.1f} s, POST -> "
                f"delivered {run.seconds:.1f} s), ratio to raw TLS {rate / tls_rate:.3f}; CPU "
                f"laptop {cpu[0]:.1f} s, desk {cpu[1]:.1f} s, server {cpu[2]:.1f} s; laptop "
                f"interface tx {tx / (big_mib * MiB):.3f} bytes per payload byte (rx {rx / 1e6:.1f} MB)"
            )
        print(f"raw {tls_what} over TCP h1 -> h2, same run: {tls_rate:.1f} MiB/s")
        print(f"load average at the end: {os.getloadavg()}")
        for d in (a, b):
            stopped = time.perf_counter()
            try:
                d.stop()
            except AssertionError:
                print(f"{d.home.name} did not stop on SIGTERM in 20 s (killed)")
            else:
                print(f"{d.home.name} stopped in {time.perf_counter() - stopped:.1f} s")
        server.stop()
    finally:
        lab.close()
        if keep:
            print(f"homes and logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--big-mib", type=int, default=200)
    parser.add_argument(
        "--relay-cap",
        type=int,
        default=64,
        help="the server's relays per account (pending + active); 0: its default, 8",
    )
    parser.add_argument(
        "--head-start", type=float, help="HANDOFF_DIRECT_HEAD_START for both daemons"
    )
    parser.add_argument("--keep", action="store_true", help="keep the homes and logs")
    args = parser.parse_args()
    asyncio.run(main_async(args.runs, args.big_mib, args.relay_cap, args.head_start, args.keep))


if __name__ == "__main__":
    main()
