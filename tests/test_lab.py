"""Self-tests of the network lab: traffic flows, each fault bites and is undone, nothing is left."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.lab import Host, Lab, _rate_bytes, _start_ticks, netns_list, pids_in, probe, sh
from tests.lab import sweep_stale as sweep
from tests.lab.fixtures import LabFactory, require_lab

ROOT = Path(__file__).resolve().parents[1]
AGENT = str(ROOT / "tests" / "lab" / "agent.py")
MDNS_GROUP, MDNS_PORT = "224.0.0.251", 5353
SINK = 7001


def agent(*args: object) -> list[str]:
    """argv of the lab agent."""
    return [sys.executable, AGENT, *(str(a) for a in args)]


def ready(proc: subprocess.Popen[str]) -> None:
    """Wait for the agent's "ready" line."""
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"


def start_sink(host: Host, port: int = SINK) -> None:
    """A TCP sink on ``host`` (stopped with the lab)."""
    ready(host.popen(agent("tcp-sink", host.address, port), stdout=subprocess.PIPE, text=True))


def tcp_ok(src: Host, dst: Host, nbytes: int = 1000, timeout: float = 2.0) -> bool:
    """True if ``nbytes`` went from src to the sink on dst and were counted there."""
    done = src.run(
        agent("tcp-send", dst.address, SINK, nbytes, timeout), check=False, timeout=timeout + 5
    )
    return done.returncode == 0 and done.stdout.split()[0] == str(nbytes)


def tcp_seconds(src: Host, dst: Host, nbytes: int) -> float:
    """Seconds to move ``nbytes`` from src to the sink on dst."""
    done = src.run(agent("tcp-send", dst.address, SINK, nbytes, 10), timeout=15)
    count, seconds = done.stdout.split()
    assert int(count) == nbytes
    return float(seconds)


def udp_counts(
    src: Host, dsts: list[Host], port: int, n: int, group: str | None = None
) -> list[int]:
    """How many of ``n`` datagrams from src (to ``group``, else unicast) each of dsts received."""
    if group is None:
        assert len(dsts) == 1
    recvs = []
    for dst in dsts:
        recv = dst.popen(
            agent("udp-recv", dst.address, port, group or "-", 10),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        ready(recv)
        recvs.append(recv)
    src.run(agent("udp-send", src.address, group or dsts[0].address, port, n))
    time.sleep(0.1)  # in flight
    counts = []
    for recv in recvs:
        out, _ = recv.communicate(timeout=5)
        counts.append(int(out.strip()))
    return counts


def udp_count(src: Host, dst: Host, port: int, n: int, group: str | None = None) -> int:
    """Datagrams that reached dst out of ``n`` sent by src."""
    return udp_counts(src, [dst], port, n, group)[0]


pytestmark = [pytest.mark.lab, pytest.mark.timeout(60)]

# ---------------------------------------------------------------- topology and traffic


def test_hosts_have_only_lab_addresses_and_loopback(lab_factory: LabFactory) -> None:
    lab = lab_factory(3)
    assert [h.address for h in lab.hosts] == ["198.18.0.1", "198.18.0.2", "198.18.0.3"]
    assert len(set(lab.namespaces)) == 4  # bridge + 3 hosts
    for h in lab.hosts:
        addrs = sh("ip", "-n", h.netns, "-o", "addr", "show").split("\n")
        found = sorted(re.findall(r"inet6? (\S+)", "\n".join(addrs)))
        assert found == sorted(["127.0.0.1/8", "::1/128", f"{h.address}/24"])
        # No way out of the lab: no default route, and no interface but lo and eth0.
        assert h.run(["ip", "route", "get", "8.8.8.8"], check=False).returncode != 0
        links = sh("ip", "-n", h.netns, "-o", "link", "show")
        assert re.findall(r"^\d+: ([^:@]+)", links, re.M) == ["lo", "eth0"]
        assert "224.0.0.0/4 dev eth0" in sh("ip", "-n", h.netns, "route", "show")
    loop = (
        "import socket; s = socket.create_server(('127.0.0.1', 0)); "
        "c = socket.create_connection(s.getsockname(), timeout=2); print('ok')"
    )
    assert lab.hosts[0].run([sys.executable, "-c", loop]).stdout.strip() == "ok"


def test_tcp_and_mdns_multicast_between_hosts(lab_factory: LabFactory) -> None:
    lab = lab_factory(3)
    a, b, c = lab.hosts
    start_sink(b)
    assert tcp_ok(a, b, nbytes=300_000)
    assert udp_counts(a, [b, c], MDNS_PORT, 20, group=MDNS_GROUP) == [20, 20]


@pytest.mark.asyncio
async def test_spawn_runs_in_the_host_and_is_stopped(lab: Lab) -> None:
    a, b = lab.hosts
    proc = await a.spawn(["ip", "-o", "-4", "addr", "show", "dev", "eth0"], stdout=subprocess.PIPE)
    out, _ = await proc.communicate()
    assert f"inet {a.address}/24" in out.decode()
    sleeper = await b.spawn(["sleep", "300"])
    await lab.aclose()
    assert await asyncio.wait_for(sleeper.wait(), 5) == -signal.SIGTERM


# ---------------------------------------------------------------- faults


def test_link_down_then_up(lab: Lab) -> None:
    a, b = lab.hosts
    start_sink(b)
    with lab.link_down(b) as fault:
        assert not tcp_ok(a, b, timeout=0.5)
    assert not fault.active
    assert tcp_ok(a, b)
    # The routes the link took with it are back: multicast still leaves through eth0.
    assert udp_count(b, a, 7002, 10, group=MDNS_GROUP) == 10
    b.link_down(at_bridge=True)  # the cable pulled at the switch
    assert not tcp_ok(a, b, timeout=0.5)
    lab.link_up(b)
    assert tcp_ok(a, b)


def test_block_udp_keeps_tcp(lab: Lab) -> None:
    a, b = lab.hosts
    start_sink(b)
    with lab.block_udp(b):
        assert udp_count(a, b, 7003, 50) == 0
        assert udp_count(b, a, 7003, 50) == 0
        assert tcp_ok(a, b)
    assert udp_count(a, b, 7003, 50) == 50


def test_block_udp_from_one_peer(lab_factory: LabFactory) -> None:
    lab = lab_factory(3)
    a, b, c = lab.hosts
    with lab.block_udp(c, peer=a):
        assert udp_count(a, c, 7004, 30) == 0
        assert udp_count(b, c, 7004, 30) == 30
    assert udp_count(a, c, 7004, 30) == 30


def test_block_multicast_keeps_unicast(lab: Lab) -> None:
    a, b = lab.hosts
    with lab.block_multicast(b):
        assert udp_count(a, b, MDNS_PORT, 20, group=MDNS_GROUP) == 0
        assert udp_count(a, b, 7005, 20) == 20
    assert udp_count(a, b, MDNS_PORT, 20, group=MDNS_GROUP) == 20


def test_random_loss(lab: Lab) -> None:
    a, b = lab.hosts
    n = 2000
    with lab.loss(b, 20):
        got = udp_count(a, b, 7006, n)
        assert 0.6 * n < got < 0.95 * n
    assert udp_count(a, b, 7006, n) >= 0.99 * n


def test_rate_limit(lab: Lab) -> None:
    a, b = lab.hosts
    start_sink(b)
    nbytes = 512 * 1024
    free = tcp_seconds(a, b, nbytes)
    with lab.rate_limit(a, "1mibps", direction="out"):
        shaped_out = tcp_seconds(a, b, nbytes)
    with lab.rate_limit(b, "1mibps", direction="in"):
        shaped_in = tcp_seconds(a, b, nbytes)
    after = tcp_seconds(a, b, nbytes)
    # 512 KiB at 1 MiB/s: about half a second (a little less: the first burst is free).
    for shaped in (shaped_out, shaped_in):
        assert 0.35 < shaped < 2.5
        assert free < shaped / 3
    assert after < min(shaped_out, shaped_in) / 3


def test_faults_undo_only_themselves(lab: Lab) -> None:
    _, b = lab.hosts

    def rules() -> str:
        return b.run(["nft", "list", "table", "inet", lab.name]).stdout

    udp = lab.block_udp(b)
    lossy = b.loss(5)  # the Host shorthand
    shaped = b.rate_limit("8mbit")
    assert rules().count("drop") == 4
    lossy.undo()
    lossy.undo()  # idempotent
    assert "numgen" not in rules()
    assert rules().count("drop") == 2
    assert "tbf" in sh("tc", "-n", b.netns, "qdisc", "show", "dev", "eth0")
    b.no_rate_limit()
    assert not shaped.active
    assert "tbf" not in sh("tc", "-n", b.netns, "qdisc", "show", "dev", "eth0")
    b.unblock_udp()
    assert not udp.active
    assert "drop" not in rules()
    with b.fault("block_multicast"):
        assert "224.0.0.0/4 drop" in rules()
    assert "drop" not in rules()


# ---------------------------------------------------------------- two subnets


def test_two_subnets_route_tcp_and_can_drop_udp(lab_factory: LabFactory) -> None:
    lab = lab_factory(2, subnets=2)
    a, b = lab.hosts
    assert (a.address, b.address) == ("198.18.0.1", "198.18.1.2")
    start_sink(b)
    assert tcp_ok(a, b)
    assert udp_count(a, b, 7007, 20) == 20
    with lab.block_udp_between_subnets():
        assert udp_count(a, b, 7007, 20) == 0
        assert udp_count(b, a, 7007, 20) == 0
        assert tcp_ok(a, b)
    assert udp_count(a, b, 7007, 20) == 20

    no_udp = lab_factory(3, subnets=2, layout=[0, 0, 1], udp_routed=False)
    x, y, z = no_udp.hosts
    start_sink(z)
    assert tcp_ok(x, z)
    assert udp_count(x, z, 7008, 20) == 0
    assert udp_count(x, y, 7008, 20) == 20  # same subnet: the router is not in the way


# ---------------------------------------------------------------- cleanup


def _root_links() -> list[str]:
    return sorted(re.findall(r"^\d+: ([^:@]+)", sh("ip", "-o", "link", "show"), re.M))


def test_nothing_remains_after_close() -> None:
    require_lab()
    links, tables = _root_links(), sh("nft", "list", "tables")
    lab = Lab.create(3, subnets=2)
    assert _root_links() == links  # the root namespace is never touched
    a, b, c = lab.hosts
    tracked = a.popen(["sleep", "300"])
    a.popen(["sh", "-c", "sleep 300 & sleep 301"])  # a child we never heard of
    stray = subprocess.Popen(["ip", "netns", "exec", b.netns, "sleep", "300"])  # untracked
    lab.block_udp(a)
    lab.rate_limit(b)
    lab.link_down(c)
    lab.block_udp_between_subnets()
    namespaces = lab.namespaces
    time.sleep(0.1)
    assert len(pids_in(namespaces)) >= 4
    lab.close()
    assert stray.wait(timeout=5) == -signal.SIGTERM
    assert tracked.returncode == -signal.SIGTERM
    assert not pids_in(namespaces)
    assert not [ns for ns in netns_list() if ns.startswith(lab.name)]
    assert _root_links() == links
    assert sh("nft", "list", "tables") == tables
    lab.close()  # idempotent
    with pytest.raises(Exception, match="closed"):
        a.run(["true"])


CHILD = """
import signal, sys, time
from subprocess import DEVNULL
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
sys.path.insert(0, {root!r})
from tests.lab import Lab
lab = Lab.create(2)
p = lab.hosts[0].popen(["sleep", "300"], stdout=DEVNULL, stderr=DEVNULL)
print(lab.name, p.pid, flush=True)
time.sleep(60)
"""


def _child_lab() -> tuple[subprocess.Popen[str], str, int]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(root=str(ROOT))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    name, pid = child.stdout.readline().split()
    assert [ns for ns in netns_list() if ns.startswith(name)]
    return child, name, int(pid)


def _gone(pid: int) -> bool:
    if _start_ticks(pid) is None:
        return True
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_cleans_up_then_kills(sig: signal.Signals) -> None:
    require_lab()
    child, name, sleeper = _child_lab()
    child.send_signal(sig)
    _, err = child.communicate(timeout=15)
    assert child.returncode in (-sig, 1)
    if sig == signal.SIGINT:
        assert "KeyboardInterrupt" in err
    assert not [ns for ns in netns_list() if ns.startswith(name)]
    assert _gone(sleeper)


def test_sweep_removes_labs_of_dead_creators_only(lab: Lab) -> None:
    child, name, sleeper = _child_lab()
    child.kill()  # no chance to clean up
    child.communicate(timeout=5)
    stale = [ns for ns in netns_list() if ns.startswith(name)]
    assert stale
    assert sweep() == stale
    assert not [ns for ns in netns_list() if ns.startswith(name)]
    deadline = time.monotonic() + 5
    while not _gone(sleeper) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _gone(sleeper)
    assert all(ns in netns_list() for ns in lab.namespaces)  # a live lab is left alone


# ---------------------------------------------------------------- without the lab


@pytest.mark.parametrize(
    ("rate", "per_second"),
    [("1mibps", 2**20), ("8mbit", 1e6), ("1gbit", 1.25e8), ("800kbit", 1e5), ("64000", 8e3)],
)
def test_rate_units(rate: str, per_second: float) -> None:
    assert _rate_bytes(rate) == per_second


def test_rate_unit_unknown() -> None:
    with pytest.raises(ValueError, match="unit"):
        _rate_bytes("1furlong")


def test_no_root_means_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    reason = probe()
    assert reason is not None
    assert "root" in reason
    monkeypatch.setattr("tests.lab.fixtures.available", lambda: reason)
    with pytest.raises(pytest.skip.Exception, match="root"):
        require_lab()
