"""A browser device against a daemon, on loopback, in one run (no root needed).

A real server, two real daemons ("laptop", "desk") and Debian's Chromium paired
as "phone" (Playwright, headless). Measures:

- one document (default 50 MiB) laptop → phone and laptop → desk, each from
  ``POST /v1/handoffs`` to ``delivered`` on the source, alternating, ``--runs``
  times; the medians and their ratio (the browser's Accept is clicked as soon
  as its card appears);
- the page's memory while it receives a bigger document (default 200 MiB, and
  a quarter of it first, to see whether the growth follows the size):
  the renderer processes' VmRSS (every Chromium ``--type=renderer`` process
  under this benchmark) and the page's JS heap (CDP ``Performance.getMetrics``),
  sampled every 0.25 s, against the same samples before the handoff.

    .venv/bin/python -m bench.bench_browser [--mib 50] [--runs 3] [--mem-mib 200]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import Page

from handoffd.wire.invite import page_url, parse_invite
from tests.browser.helpers import chromium, devices, handoff, new_page, pair_browser
from tests.server.helpers import cli_invite, create_account
from tests.support.processes import DaemonProcess, ServerProcess
from tests.support.waiting import until

MiB = 1024 * 1024


def write_file(path: Path, size: int) -> None:
    block = hashlib.sha256(path.name.encode()).digest() * (MiB // 32)
    with path.open("wb") as f:
        for _ in range(size // MiB):
            f.write(block)


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        for c in children.get(pid, []):
            out.append(c)
            todo.append(c)
    return out


def renderer_rss_mib() -> float:
    total = 0
    for pid in descendants(os.getpid()):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"--type=renderer" not in cmd:
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def send(d: DaemonProcess, target: str, doc: Path) -> str:
    status, session = d.curl(
        "POST",
        "/v1/sessions",
        {
            "app_id": "org.example.bench",
            "title": doc.name,
            "items": [{"type": "document", "name": doc.name, "path": str(doc)}],
        },
    )
    assert status == 201, session
    status, h = d.curl("POST", "/v1/handoffs", {"session_id": session["id"], "target": target})
    assert status in (200, 201, 202), h
    return str(h["id"])


def state(d: DaemonProcess, hid: str) -> dict[str, Any]:
    return dict(d.curl("GET", f"/v1/handoffs/{hid}")[1])


def delivered(d: DaemonProcess, hid: str) -> bool | None:
    s = state(d, hid)["state"]
    assert s not in ("failed", "declined", "cancelled"), s
    return s in ("delivered", "resumed") or None


def to_browser(laptop: DaemonProcess, page: Page, doc: Path) -> float:
    started = time.perf_counter()
    hid = send(laptop, "phone", doc)
    page.click(f"article[data-handoff='{hid}'] button.accept", timeout=120_000)
    until(lambda: delivered(laptop, hid), "delivered to the browser", within=900, every=0.05)
    return time.perf_counter() - started


def to_daemon(laptop: DaemonProcess, doc: Path) -> float:
    started = time.perf_counter()
    hid = send(laptop, "desk", doc)
    until(lambda: delivered(laptop, hid), "delivered to the daemon", within=900, every=0.05)
    return time.perf_counter() - started


def memory(laptop: DaemonProcess, page: Page, doc: Path) -> dict[str, float]:
    cdp = page.context.new_cdp_session(page)
    cdp.send("Performance.enable")

    def heap() -> float:
        metrics = cdp.send("Performance.getMetrics")["metrics"]
        return float(next(m["value"] for m in metrics if m["name"] == "JSHeapUsedSize")) / MiB

    rss: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            rss.append(renderer_rss_mib())
            time.sleep(0.25)

    before_rss, before_heap = renderer_rss_mib(), heap()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    heaps: list[float] = []
    hid = send(laptop, "phone", doc)
    page.click(f"article[data-handoff='{hid}'] button.accept", timeout=120_000)
    deadline = time.monotonic() + 900
    while not delivered(laptop, hid):
        assert time.monotonic() < deadline, "not delivered"
        heaps.append(heap())
        time.sleep(0.25)
    stop.set()
    sampler.join()
    return {
        "rss_before": before_rss,
        "rss_peak": max(rss),
        "heap_before": before_heap,
        "heap_peak": max(heaps or [before_heap]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mem-mib", type=int, default=200)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hb", dir="/tmp"))
    server = ServerProcess(root / "srv").start()
    laptop, desk = DaemonProcess(root / "a"), DaemonProcess(root / "b")
    try:
        create_account(server.data, "bench")
        for d, name in ((laptop, "laptop"), (desk, "desk")):
            d.home.mkdir(mode=0o700)
            d.start()
            assert (
                handoff(
                    d.home, "pair", cli_invite(server.data, "bench")[0], "--name", name
                ).returncode
                == 0
            )
        doc = root / "doc.bin"
        write_file(doc, args.mib * MiB)
        sizes = (args.mem_mib // 4, args.mem_mib)
        bigs = [root / f"big-{n}.bin" for n in sizes]
        for n, path in zip(sizes, bigs, strict=True):
            write_file(path, n * MiB)
        with chromium() as browser:
            _, page = new_page(browser)
            invite = parse_invite(cli_invite(server.data, "bench")[0])
            assert invite.token is not None
            phone = pair_browser(
                page, page_url(server.url, invite.token, server.fingerprint), "phone"
            )
            until(lambda: devices(laptop.home).get(phone, {}).get("online"), "phone online")
            until(
                lambda: any(
                    d["name"] == "desk" and d["online"] for d in devices(laptop.home).values()
                ),
                "desk online",
            )
            browser_s, daemon_s = [], []
            for _ in range(args.runs):
                browser_s.append(to_browser(laptop, page, doc))
                daemon_s.append(to_daemon(laptop, doc))
            b, dd = statistics.median(browser_s), statistics.median(daemon_s)
            print(
                f"{args.mib} MiB laptop → phone (Chromium): median {b:.2f} s = {args.mib / b:.1f} MiB/s  runs {[round(x, 2) for x in browser_s]}"
            )
            print(
                f"{args.mib} MiB laptop → desk (daemon):    median {dd:.2f} s = {args.mib / dd:.1f} MiB/s  runs {[round(x, 2) for x in daemon_s]}"
            )
            print(f"browser / daemon time: {b / dd:.2f}")
            for n, path in zip(sizes, bigs, strict=True):  # growth should not follow the size
                mem = memory(laptop, page, path)
                print(
                    f"{n} MiB receive: renderer RSS {mem['rss_before']:.0f} → peak {mem['rss_peak']:.0f} MiB "
                    f"(+{mem['rss_peak'] - mem['rss_before']:.0f}); "
                    f"JS heap {mem['heap_before']:.0f} → peak {mem['heap_peak']:.0f} MiB"
                )
    finally:
        for d in (laptop, desk):
            d.kill()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
