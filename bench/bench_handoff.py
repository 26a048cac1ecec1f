"""LAN handoff in the network lab, on a tc-tbf-shaped 1 Gbit link (needs root).

Measures, in one run: discovery time (daemon start to peer nearby); handoff
latency of a small session, cold (a new WebRTC connection each time) and warm
(a kept link), p50/p95; throughput of a 200 MiB document against raw TLS over
TCP between the same two hosts (the ratio); daemon RSS during a 1 GiB transfer.

    .venv/bin/python -m bench.bench_handoff [--runs 15] [--big-mib 200] [--rss-mib 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from handoffd.control.client import HandoffClient, NewItem
from tests.handoff.helpers import wait_nearby, write_random
from tests.handoff.test_lab_handoff import LabDaemon, start_server
from tests.lab import Host, Lab
from tests.server.helpers import ServerProcess, cli_invite, create_account

MiB = 1024 * 1024
TLS_PEER = r"""
import socket, ssl, sys, time
mode, addr, port, cert, key, nbytes = sys.argv[1:7]
if mode == "server":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert, key)
    srv = socket.create_server((addr, int(port))); print("ready", flush=True)
    conn, _ = srv.accept(); s = ctx.wrap_socket(conn, server_side=True); total = 0
    while total < int(nbytes) and (b := s.recv(1 << 20)): total += len(b)
    s.sendall(b"ok"); print(total, flush=True)
else:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.load_verify_locations(cert); ctx.check_hostname = False
    s = ctx.wrap_socket(socket.create_connection((addr, int(port))))
    block = b"x" * (1 << 20); t = time.perf_counter(); left = int(nbytes)
    while left > 0: s.sendall(block[: min(left, len(block))]); left -= len(block)
    assert s.recv(2) == b"ok"; print(time.perf_counter() - t, flush=True)
"""


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * p))]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def self_signed(root: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256())
    )  # fmt: skip
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


def raw_tls_seconds(a: Host, b: Host, root: Path, nbytes: int) -> float:
    import subprocess

    cert, key = self_signed(root)
    script = root / "tlspeer.py"
    script.write_text(TLS_PEER)
    srv = b.popen([sys.executable, str(script), "server", b.address, "7443", str(cert), str(key), str(nbytes)],
                  stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert srv.stdout is not None
    assert srv.stdout.readline().strip() == "ready"
    out = a.run([sys.executable, str(script), "client", b.address, "7443", str(cert), str(key), str(nbytes)],
                timeout=600).stdout  # fmt: skip
    srv.wait(timeout=60)
    return float(out.strip())


async def one_handoff(
    a: HandoffClient, target: str, items: list[NewItem]
) -> tuple[float, dict[str, object]]:
    session = await a.publish("org.example.bench", "bench", items=items)
    t = time.perf_counter()
    h = await a.send(session.id, target)
    while True:  # poll finely: the small-session latency is tens of milliseconds
        done: dict[str, object] = await a.request("GET", f"/v1/handoffs/{h.id}")
        if done["state"] in {"delivered", "resumed", "failed", "declined"}:
            return time.perf_counter() - t, done
        await asyncio.sleep(0.005)


def start_pair(
    lab: Lab, root: Path, server: ServerProcess, warm_idle: str, tag: str
) -> tuple[LabDaemon, LabDaemon, str, float]:
    h0, h1 = lab.hosts
    a = LabDaemon(root / f"a{tag}", env={"HANDOFF_WARM_IDLE": warm_idle}, host=h0)
    b = LabDaemon(root / f"b{tag}", env={"HANDOFF_WARM_IDLE": warm_idle}, host=h1)
    for d in (a, b):
        d.home.mkdir(mode=0o700)
        d.start()
    ids = []
    for d, name in ((a, f"laptop{tag}"), (b, f"desk{tag}")):
        url, _ = cli_invite(server.data, "bench")
        status, body = d.curl("POST", "/v1/pair", {"invite": url, "name": name})
        assert status == 200, body
        ids.append(str(body["device_id"]))
    t = time.perf_counter()
    wait_nearby(a, ids[1])
    return a, b, ids[1], time.perf_counter() - t


async def main_async(runs: int, big_mib: int, rss_mib_total: int) -> None:
    lab = Lab.create(2)
    root = Path(tempfile.mkdtemp(prefix="hb", dir="/tmp"))
    try:
        h0, h1 = lab.hosts
        for h in (h0, h1):
            h.rate_limit("1gbit", "1mb", "50ms")
        server = start_server(h0, root / "srv")
        create_account(server.data, "bench")
        small = [NewItem.of_text("message", f"m{i}.txt", f"message {i}") for i in range(5)]

        # Cold: no link is ever reused. The discovery time is after the daemons were paired.
        a, b, target, discovery = start_pair(lab, root, server, "0", "c")
        async with HandoffClient(a.socket, timeout=60) as ca:
            cold = [(await one_handoff(ca, target, small))[0] for _ in range(runs)]
        for d in (a, b):
            d.stop()
        a, b, target, _ = start_pair(lab, root, server, "600", "w")
        async with HandoffClient(a.socket, timeout=60) as ca:
            await one_handoff(ca, target, small)  # opens the link
            warm = [(await one_handoff(ca, target, small))[0] for _ in range(runs)]

            big = root / "big.bin"
            await asyncio.to_thread(write_random, big, big_mib * MiB)
            secs, done = await one_handoff(
                ca, target, [NewItem.of_path("document", "big.bin", big)]
            )
            assert done["state"] in {"delivered", "resumed"}, done
            tls = raw_tls_seconds(h0, h1, root, big_mib * MiB)

            huge = root / "huge.bin"
            await asyncio.to_thread(write_random, huge, rss_mib_total * MiB)
            samples_a: list[float] = []
            samples_b: list[float] = []

            async def sample() -> None:
                while True:
                    assert a.proc is not None
                    assert b.proc is not None
                    samples_a.append(rss_mib(a.proc.pid))
                    samples_b.append(rss_mib(b.proc.pid))
                    await asyncio.sleep(0.5)

            task = asyncio.create_task(sample())
            huge_secs, done = await one_handoff(
                ca, target, [NewItem.of_path("document", "huge.bin", huge)]
            )
            task.cancel()
            assert done["state"] in {"delivered", "resumed"}, done

        print(f"discovery (paired daemon start to peer nearby): {discovery * 1000:.0f} ms")
        for label, xs in (("cold", cold), ("warm", warm)):
            print(f"small-session handoff {label}: p50 {pct(xs, .5) * 1000:.0f} ms, "
                  f"p95 {pct(xs, .95) * 1000:.0f} ms (n={len(xs)}, mean {statistics.fmean(xs) * 1000:.0f} ms)")  # fmt: skip
        rate, tls_rate = big_mib / secs, big_mib / tls
        print(
            f"{big_mib} MiB document: handoff {rate:.1f} MiB/s, raw TLS over TCP {tls_rate:.1f} MiB/s, ratio {rate / tls_rate:.3f}"
        )
        print(f"{rss_mib_total} MiB transfer in {huge_secs:.0f} s: RSS sender max {max(samples_a):.0f} MiB, "
              f"receiver max {max(samples_b):.0f} MiB (start {samples_a[0]:.0f}/{samples_b[0]:.0f} MiB)")  # fmt: skip
        for d in (a, b):
            d.stop()
    finally:
        lab.close()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--big-mib", type=int, default=200)
    parser.add_argument("--rss-mib", type=int, default=1024)
    args = parser.parse_args()
    asyncio.run(main_async(args.runs, args.big_mib, args.rss_mib))


if __name__ == "__main__":
    main()
