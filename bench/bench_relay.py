"""Relay throughput against a raw WebSocket relay through the same kind of middle process.

Both run on loopback over wss with a self-signed, pinned certificate, in the
same run:

- **relay**: a real ``handoff-server`` process; two devices of one account
  (in this process) open a ``RelayChannel`` (TLS 1.3 inside the pipe, framed
  messages) and one sends ``--mib`` MiB in 64 KiB messages to the other.
- **baseline**: a minimal aiohttp process that pairs two WebSockets and
  forwards binary messages (the same forward-and-await loop, no auth, no
  inner TLS); the same two-client pattern moves the same bytes.

    .venv/bin/python -m bench.bench_relay [--mib 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import WSMsgType, web

from handoffd.server import tlscert
from handoffd.transport.base import Channel
from tests.relay.helpers import Node, pair_devices, start_server

CHUNK = 64 * 1024


# ---------------------------------------------------------------- the baseline middle process


async def _middle(port_file: Path, data_dir: Path) -> None:
    tls = tlscert.load_or_create(data_dir, now=dt.datetime.now(dt.UTC), extra_hosts=["127.0.0.1"])
    waiting: list[web.WebSocketResponse] = []
    paired = asyncio.Event()
    done = asyncio.Event()

    async def pump(src: web.WebSocketResponse, dst: web.WebSocketResponse) -> None:
        async for msg in src:
            if msg.type != WSMsgType.BINARY:
                break
            await dst.send_bytes(msg.data)
        await dst.close()

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=256 * 1024, compress=False)
        await ws.prepare(request)
        waiting.append(ws)
        if len(waiting) == 2:
            paired.set()
        await paired.wait()
        a, b = waiting[0], waiting[1]
        await pump(a, b) if ws is a else await pump(b, a)
        done.set()
        return ws

    async def reset(request: web.Request) -> web.Response:
        waiting.clear()
        paired.clear()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/pipe", handler)
    app.router.add_post("/reset", reset)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.ssl_context())
    await site.start()
    port = runner.addresses[0][1]
    await asyncio.to_thread(port_file.write_text, f"{port} {tls.fingerprint}")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


async def _baseline(port: int, fingerprint: str, size: int) -> float:
    ssl = aiohttp.Fingerprint(bytes.fromhex(fingerprint.split(":", 1)[1]))
    url = f"wss://127.0.0.1:{port}/pipe"
    async with aiohttp.ClientSession() as session:
        await (await session.post(f"https://127.0.0.1:{port}/reset", ssl=ssl)).release()
        a = await session.ws_connect(url, ssl=ssl, max_msg_size=256 * 1024, compress=0)
        b = await session.ws_connect(url, ssl=ssl, max_msg_size=256 * 1024, compress=0)
        payload = os.urandom(CHUNK)

        async def send() -> None:
            for _ in range(size // CHUNK):
                await a.send_bytes(payload)

        async def recv() -> None:
            got = 0
            while got < size:
                msg = await b.receive()
                got += len(msg.data)

        started = time.perf_counter()
        await asyncio.gather(send(), recv())
        elapsed = time.perf_counter() - started
        await a.close()
        await b.close()
    return elapsed


# ---------------------------------------------------------------- the relay


async def _relay_round(sender: Channel, receiver: Channel, size: int) -> float:
    payload = os.urandom(CHUNK)

    async def send() -> None:
        for _ in range(size // CHUNK):
            await sender.send(payload)

    async def recv() -> None:
        got = 0
        while got < size:
            got += len(await receiver.recv())

    started = time.perf_counter()
    await asyncio.gather(send(), recv())
    return time.perf_counter() - started


async def main_async(args: argparse.Namespace, base: Path) -> None:
    size = args.mib * 1024 * 1024
    (base / "server").mkdir()
    server = start_server(base / "server")
    middle_dir = base / "middle"
    middle_dir.mkdir()
    port_file = base / "middle.port"
    middle = subprocess.Popen(  # noqa: ASYNC220 - started once, before measuring
        [sys.executable, "-m", "bench.bench_relay", "--middle", str(port_file), str(middle_dir)]
    )
    try:
        a, b = await asyncio.to_thread(pair_devices, server, "bench", 2)
        for _ in range(200):
            if port_file.exists() and port_file.read_text():
                break
            await asyncio.sleep(0.05)
        port_text, fingerprint = port_file.read_text().split()
        relay_times: list[float] = []
        base_times: list[float] = []
        async with Node(server, a) as na, Node(server, b) as nb:
            await na.wait_online(nb.id)
            loop = asyncio.get_running_loop()
            channel = await na.dialer().dial(nb.id, deadline=loop.time() + 20)
            peer = await asyncio.wait_for(nb.channels.get(), 10)
            try:
                for _ in range(args.rounds):
                    relay_times.append(await _relay_round(channel, peer, size))
                    base_times.append(await _baseline(int(port_text), fingerprint, size))
            finally:
                await channel.close()
        relay = args.mib / statistics.median(relay_times)
        raw = args.mib / statistics.median(base_times)
        print(f"payload {args.mib} MiB in 64 KiB messages, median of {args.rounds} rounds")
        print(
            f"relay (TLS 1.3 inside, handoff-server): {relay:.0f} MiB/s "
            f"({', '.join(f'{args.mib / t:.0f}' for t in relay_times)})"
        )
        print(
            f"raw WebSocket relay (aiohttp middle process): {raw:.0f} MiB/s "
            f"({', '.join(f'{args.mib / t:.0f}' for t in base_times)})"
        )
        print(f"ratio relay / raw: {relay / raw:.2f}")
    finally:
        middle.send_signal(signal.SIGTERM)
        middle.wait(timeout=15)
        server.stop()


def main() -> None:
    """Run the benchmark (or, with ``--middle``, be the baseline's middle process)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--middle", nargs=2, metavar=("PORT_FILE", "DATA_DIR"))
    args = parser.parse_args()
    if args.middle:
        asyncio.run(_middle(Path(args.middle[0]), Path(args.middle[1])))
        return
    base = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    try:
        asyncio.run(main_async(args, base))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
