"""Benchmark: mDNS discovery timings on loopback (python-zeroconf and handoffd's Discovery).

Measures, each ``--rounds`` times (median, min to max):
- registration with the conflict probe (zeroconf's default) and without it
  (``cooperating_responders=True``, what Discovery does): time until
  ``async_register_service`` returns, until a browser already running sees the
  new instance, and until the three announcements are sent;
- a fresh browser resolving a peer that is already advertised;
- Discovery: ``start()`` duration, start → "nearby" at a running peer, and
  ``close()`` (goodbye) → "gone" at the peer;
- once: a peer process killed with SIGKILL → "gone" by the liveness check with
  the default policy (skip with ``--no-kill``).

Run: .venv/bin/python -m bench.bench_discovery [--rounds N] [--no-kill]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zeroconf import DNSQuestionType, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from handoffd.discovery import txt
from handoffd.discovery.browse import DiscoveryEvent
from handoffd.discovery.liveness import LivenessPolicy
from handoffd.discovery.mdns import Discovery

LO = ["127.0.0.1"]
KEY = os.urandom(32)
PEER = str(Path(__file__).parent.parent / "tests" / "discovery" / "peer_proc.py")
ROOT = str(Path(__file__).parent.parent)


def ms(values: list[float]) -> str:
    """Median and range in milliseconds."""
    vals = sorted(v * 1000 for v in values)
    return f"median {statistics.median(vals):.1f} ms (min {vals[0]:.1f}, max {vals[-1]:.1f})"


def _zc() -> AsyncZeroconf:
    return AsyncZeroconf(interfaces=LO, ip_version=IPVersion.V4Only)


class Seen:
    """Records when a browser first reports each instance name."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.changed = asyncio.Event()

    def handler(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Added and name not in self.at:
            self.at[name] = time.perf_counter()
            self.changed.set()

    async def wait(self, name: str, limit: float = 10.0) -> float:
        async with asyncio.timeout(limit):
            while name not in self.at:
                self.changed.clear()
                await self.changed.wait()
        return self.at[name]


def _info(marker: str, port: int) -> AsyncServiceInfo:
    return AsyncServiceInfo(
        txt.SERVICE_TYPE,
        txt.instance_name(marker),
        port=port,
        properties={"v": "1"},
        server=txt.host_name(marker),
        parsed_addresses=LO,
    )


async def registration(rounds: int, *, probe: bool) -> dict[str, list[float]]:
    """Register a new instance per round while a browser runs in another responder."""
    out: dict[str, list[float]] = {"returned": [], "seen": [], "announced": []}
    observer, seen = _zc(), Seen()
    browser = AsyncServiceBrowser(observer.zeroconf, txt.SERVICE_TYPE, handlers=[seen.handler])
    try:
        for _ in range(rounds):
            marker = os.urandom(10).hex()
            azc = _zc()
            await azc.zeroconf.async_wait_for_start()
            try:
                info = _info(marker, 4000)
                t0 = time.perf_counter()
                announce = await azc.async_register_service(info, cooperating_responders=not probe)
                out["returned"].append(time.perf_counter() - t0)
                out["seen"].append(await seen.wait(info.name) - t0)
                await announce
                out["announced"].append(time.perf_counter() - t0)
            finally:
                await azc.async_close()
    finally:
        await browser.async_cancel()
        await observer.async_close()
    return out


async def fresh_browser(rounds: int, question: DNSQuestionType | None) -> list[float]:
    """A new responder + browser resolving one peer already advertised.

    ``question``: None is zeroconf's default (the first queries ask for a
    unicast answer, QU); QM asks for multicast answers.
    """
    out = []
    adv = _zc()
    info = _info(os.urandom(10).hex(), 4000)
    await (await adv.async_register_service(info, cooperating_responders=True))
    try:
        for _ in range(rounds):
            # A responder multicasts a record at most once a second (RFC 6762 §6): rounds
            # closer together would measure that rule, not discovery.
            await asyncio.sleep(1.2)
            t0 = time.perf_counter()
            azc, seen = _zc(), Seen()
            browser = AsyncServiceBrowser(
                azc.zeroconf, txt.SERVICE_TYPE, handlers=[seen.handler], question_type=question
            )
            try:
                await seen.wait(info.name)
                found = AsyncServiceInfo(txt.SERVICE_TYPE, info.name)
                if not await found.async_request(azc.zeroconf, 3000, question_type=question):
                    raise RuntimeError("not resolved")
                out.append(time.perf_counter() - t0)
            finally:
                await browser.async_cancel()
                await azc.async_close()
    finally:
        await adv.async_close()
    return out


async def _until(cond: Callable[[], bool], limit: float) -> float:
    async with asyncio.timeout(limit):
        while not cond():  # noqa: ASYNC110 - polling state another task updates
            await asyncio.sleep(0.001)
    return time.perf_counter()


async def discovery(rounds: int) -> dict[str, list[float]]:
    """Discovery start → nearby at a running peer; close → gone."""
    out: dict[str, list[float]] = {"start": [], "nearby": [], "gone": []}
    ids = [f"{i:032d}" for i in range(rounds + 1)]
    events: list[DiscoveryEvent] = []
    known = frozenset(ids)
    watcher = Discovery(
        device_id=ids[0], port=4000, marker_key=KEY, known_devices=lambda: known,
        on_change=events.append, interfaces=LO,
    )  # fmt: skip
    await watcher.start()
    try:
        for device in ids[1:]:
            peer = Discovery(
                device_id=device, port=4001, marker_key=KEY, known_devices=lambda: known,
                on_change=lambda e: None, interfaces=LO,
            )  # fmt: skip
            t0 = time.perf_counter()
            await peer.start()
            out["start"].append(time.perf_counter() - t0)
            t1 = await _until(lambda d=device: watcher.lookup(d) is not None, 10)  # type: ignore[misc]
            out["nearby"].append(t1 - t0)
            t2 = time.perf_counter()
            closing = asyncio.create_task(peer.close())  # the first goodbye leaves at once
            t3 = await _until(lambda d=device: watcher.lookup(d) is None, 10)  # type: ignore[misc]
            out["gone"].append(t3 - t2)
            await closing
    finally:
        await watcher.close()
    return out


async def fresh_watcher(rounds: int) -> list[float]:
    """Discovery started while a peer is already advertised: start → peer nearby."""
    a_id, b_id = "A" * 32, "B" * 32
    known = frozenset({a_id, b_id})
    peer = Discovery(
        device_id=b_id, port=4001, marker_key=KEY, known_devices=lambda: known,
        on_change=lambda e: None, interfaces=LO,
    )  # fmt: skip
    await peer.start()
    await peer.registered.wait()
    out = []
    try:
        for _ in range(rounds):
            await asyncio.sleep(1.2)  # one multicast per record per second (RFC 6762 §6)
            watcher = Discovery(
                device_id=a_id, port=4000, marker_key=KEY, known_devices=lambda: known,
                on_change=lambda e: None, interfaces=LO,
            )  # fmt: skip
            t0 = time.perf_counter()
            await watcher.start()
            try:
                out.append(await _until(lambda w=watcher: w.lookup(b_id) is not None, 10) - t0)  # type: ignore[misc]
            finally:
                await watcher.close()
    finally:
        await peer.close()
    return out


async def killed(policy: LivenessPolicy) -> float:
    """A peer process killed without goodbye → gone by liveness (default policy)."""
    a_id, b_id = "A" * 32, "B" * 32
    watcher = Discovery(
        device_id=a_id, port=4000, marker_key=KEY, known_devices=lambda: frozenset({a_id, b_id}),
        on_change=lambda e: None, interfaces=LO, liveness=policy,
    )  # fmt: skip
    await watcher.start()
    proc: Any = await asyncio.create_subprocess_exec(
        sys.executable, PEER, b_id, "4001", KEY.hex(), f"{a_id},{b_id}", "--interface", LO[0],
        stdout=asyncio.subprocess.DEVNULL, cwd=ROOT,
    )  # fmt: skip
    try:
        await _until(lambda: watcher.lookup(b_id) is not None, 15)
        await asyncio.sleep(policy.stale_after * 1.5)  # steady state: checks answered
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        t1 = await _until(lambda: watcher.lookup(b_id) is None, 120)
        return t1 - t0
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        await watcher.close()


async def main(rounds: int, kill: bool) -> None:
    print(f"zeroconf on loopback, {rounds} rounds each")
    for probe in (True, False):
        res = await registration(rounds, probe=probe)
        label = "with probe   " if probe else "without probe"
        print(f"register {label}: returns {ms(res['returned'])}")
        print(f"register {label}: seen by a running browser {ms(res['seen'])}")
        print(f"register {label}: announcements sent {ms(res['announced'])}")
    for question in (None, DNSQuestionType.QM):
        label = "QM" if question else "default (QU first)"
        print(
            f"fresh browser → resolved peer, {label}: {ms(await fresh_browser(rounds, question))}"
        )
    print(
        f"Discovery started with a peer already advertised → nearby: {ms(await fresh_watcher(rounds))}"
    )
    res = await discovery(rounds)
    print(f"Discovery.start(): {ms(res['start'])}")
    print(f"Discovery start → nearby at a running peer: {ms(res['nearby'])}")
    print(f"Discovery close (goodbye) → gone at the peer: {ms(res['gone'])}")
    if kill:
        policy = LivenessPolicy()
        took = await killed(policy)
        print(
            f"peer SIGKILLed → gone (liveness, default policy, bound "
            f"{policy.gone_within():.0f} s + tick): {took:.1f} s"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-kill", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.rounds, not args.no_kill))
