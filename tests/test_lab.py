"""Self-tests of the network lab: traffic flows, each fault bites and is undone, nothing is left."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.lab import Host, Lab, sh

AGENT = str(Path(__file__).parent / "lab" / "agent.py")
GROUP = "239.255.77.1"

pytestmark = pytest.mark.lab


def _agent(host: Host, *args: object) -> list[str]:
    return [sys.executable, AGENT, *(str(a) for a in args)]


def _ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"


def _sink(host: Host, port: int) -> None:
    proc = host.popen(
        _agent(host, "tcp-sink", host.address, port), stdout=subprocess.PIPE, text=True
    )
    _ready(proc)


def tcp_ok(src: Host, dst: Host, port: int, nbytes: int = 1000, timeout: float = 2.0) -> bool:
    """True if ``nbytes`` went from src to dst's sink and were counted."""
    done = src.run(_agent(src, "tcp-send", dst.address, port, nbytes, timeout), check=False)
    return done.returncode == 0 and done.stdout.split()[0] == str(nbytes)


def tcp_seconds(src: Host, dst: Host, port: int, nbytes: int) -> float:
    done = src.run(_agent(src, "tcp-send", dst.address, port, nbytes, 30), timeout=60)
    count, seconds = done.stdout.split()
    assert int(count) == nbytes
    return float(seconds)


def udp_count(src: Host, dst: Host, port: int, n: int, *, group: str | None = None) -> int:
    """Datagrams that arrived at dst out of ``n`` sent by src (to a group if given)."""
    recv = dst.popen(
        _agent(dst, "udp-recv", dst.address, port, group or "-", 1.5),
        stdout=subprocess.PIPE,
        text=True,
    )
    _ready(recv)
    src.run(_agent(src, "udp-send", src.address, group or dst.address, port, n))
    out, _ = recv.communicate(timeout=10)
    return int(out.strip())


def test_tcp_and_multicast_between_two_hosts(lab: Lab) -> None:
    a, b = lab.hosts
    _sink(b, 7001)
    assert tcp_ok(a, b, 7001, nbytes=300_000)
    assert udp_count(a, b, 7002, 20, group=GROUP) == 20


def test_link_down_then_up(lab: Lab) -> None:
    a, b = lab.hosts
    _sink(b, 7001)
    with b.fault("link_down"):
        assert not tcp_ok(a, b, 7001, timeout=1.0)
    assert tcp_ok(a, b, 7001)


def test_block_udp_keeps_tcp(lab: Lab) -> None:
    a, b = lab.hosts
    _sink(b, 7001)
    with b.fault("block_udp"):
        assert udp_count(a, b, 7003, 50) == 0
        assert tcp_ok(a, b, 7001)
    assert udp_count(a, b, 7003, 50) == 50


def test_block_multicast_keeps_unicast(lab: Lab) -> None:
    a, b = lab.hosts
    with b.fault("block_multicast"):
        assert udp_count(a, b, 7004, 20, group=GROUP) == 0
        assert udp_count(a, b, 7005, 20) == 20
    assert udp_count(a, b, 7004, 20, group=GROUP) == 20


def test_random_loss(lab: Lab) -> None:
    a, b = lab.hosts
    n = 2000
    with b.fault("loss", 20):
        got = udp_count(a, b, 7006, n)
        assert 0.6 * n < got < 0.95 * n
    assert udp_count(a, b, 7006, n) >= 0.99 * n


def test_rate_limit(lab: Lab) -> None:
    a, b = lab.hosts
    _sink(b, 7001)
    nbytes = 1_500_000
    free = tcp_seconds(a, b, 7001, nbytes)
    with a.fault("rate_limit", "4mbit", "32kb", "400ms"):
        shaped = tcp_seconds(a, b, 7001, nbytes)
    # 1.5 MB at 4 Mbit/s takes about 3 s; unshaped it takes milliseconds.
    assert shaped > 2.0
    assert shaped > 10 * free
    assert tcp_seconds(a, b, 7001, nbytes) < shaped / 10


def test_two_subnets_tcp_routed_udp_blocked(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(2, subnets=2)
    a, b = lab.hosts
    assert a.address.split(".")[2] != b.address.split(".")[2]
    _sink(b, 7001)
    assert tcp_ok(a, b, 7001)
    assert udp_count(a, b, 7007, 20) == 20
    lab.block_udp_between_subnets()
    assert udp_count(a, b, 7007, 20) == 0
    assert tcp_ok(a, b, 7001)


def test_nothing_remains_after_close() -> None:
    from tests.lab.fixtures import require_lab

    require_lab()
    links_before = set(sh("ip", "-o", "link", "show").split("\n"))
    lab = Lab.create(3, subnets=2)
    a = lab.hosts[0]
    a.popen(["sleep", "300"])
    a.block_udp()
    a.rate_limit()
    name = lab.name
    pid = a.procs[0].pid
    lab.close()
    assert not [ns for ns in sh("ip", "netns", "list").split() if ns.startswith(name)]
    assert set(sh("ip", "-o", "link", "show").split("\n")) == links_before
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    lab.close()  # idempotent
