"""The network lab: hosts in Linux network namespaces on a bridge, with faults.

Every host is a namespace joined by a veth pair to a bridge that lives in a
namespace of its own, so nothing touches the root namespace's interfaces.
Addresses come from 198.18.0.0/15 (the benchmarking range). Faults use an nft
table per lab inside each host (``inet <lab>``) and ``tc tbf``; removing the
namespaces removes everything with them. Every process started in a host is
tracked and stopped by PID on close.

Use the ``lab`` fixture (tests/lab/fixtures.py) or ``Lab`` directly::

    with Lab.create(2) as lab:
        a, b = lab.hosts
        a.popen([...]); lab.block_udp(a)
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

PREFIX = "hlab"
SUBNET = "198.18"
CMD_TIMEOUT = 20.0
STOP_GRACE = 5.0


class LabError(RuntimeError):
    """A lab command failed."""


def available() -> str | None:
    """None if the lab can run here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "the network lab needs root (network namespaces)"
    for tool in ("ip", "nft", "tc"):
        if shutil.which(tool) is None:
            return f"the network lab needs `{tool}` (iproute2 / nftables)"
    return None


def sh(*argv: str, check: bool = True, timeout: float = CMD_TIMEOUT) -> str:
    """Run a command (argv, no shell); its stdout; LabError on failure when ``check``."""
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def _netns_list() -> list[str]:
    out = sh("ip", "netns", "list", check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def sweep_stale() -> list[str]:
    """Remove namespaces left by crashed labs whose creating process is gone."""
    removed = []
    for name in _netns_list():
        parts = name.split("-")
        if len(parts) < 3 or parts[0] != PREFIX or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            sh("ip", "netns", "del", name, check=False)
            removed.append(name)
        except PermissionError:
            continue
    return removed


@dataclass
class Host:
    """One lab host: a namespace with one interface ``eth0`` on the lab bridge."""

    lab: Lab
    name: str
    netns: str
    address: str
    prefix: int
    gateway: str | None = None
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)
    aprocs: list[asyncio.subprocess.Process] = field(default_factory=list)

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside this host."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = CMD_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion inside the host."""
        done = subprocess.run(
            self.argv(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise LabError(f"[{self.name}] {' '.join(argv)}: {done.stderr.strip()}")
        return done

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a tracked process inside the host (stopped by PID on close)."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc: subprocess.Popen[Any] = subprocess.Popen(self.argv(argv), **kwargs)
        self.procs.append(proc)
        return proc

    async def spawn(self, argv: Sequence[str], **kwargs: Any) -> asyncio.subprocess.Process:
        """Start a tracked process inside the host, asyncio flavour."""
        kwargs.setdefault("stdin", asyncio.subprocess.DEVNULL)
        proc = await asyncio.create_subprocess_exec(*self.argv(argv), **kwargs)
        self.aprocs.append(proc)
        return proc

    def stop_processes(self) -> None:
        """SIGTERM every tracked process, SIGKILL what is left after a grace period."""
        live: list[int] = []
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
                live.append(p.pid)
        for ap in self.aprocs:
            if ap.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    ap.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        for ap in self.aprocs:
            if ap.returncode is None:
                # asyncio children are reaped by their loop; make sure they die.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(ap.pid, signal.SIGKILL)
        for p in self.procs:
            for stream in (p.stdin, p.stdout, p.stderr):
                if stream is not None:
                    stream.close()
        self.procs.clear()
        self.aprocs.clear()

    # ------------------------------------------------------------ faults

    def nft(self, *rule: str) -> None:
        """Add an nft rule to this lab's table in the host."""
        self.run(["nft", *rule])

    def _ensure_table(self) -> None:
        table = self.lab.name
        self.run(["nft", "add", "table", "inet", table])
        for chain in ("input", "output"):
            self.run(
                [
                    "nft",
                    "add",
                    "chain",
                    "inet",
                    table,
                    chain,
                    f"{{ type filter hook {chain} priority 0 ; policy accept ; }}",
                ]
            )

    def _add_rules(self, tag: str, rules: Sequence[Sequence[str]]) -> None:
        self._ensure_table()
        for chain, *match in rules:
            self.run(
                ["nft", "add", "rule", "inet", self.lab.name, chain, *match, "comment", f'"{tag}"']
            )

    def _remove_rules(self, tag: str) -> None:
        out = self.run(["nft", "-a", "list", "table", "inet", self.lab.name], check=False).stdout
        chain = ""
        for line in out.splitlines():
            words = line.split()
            if words[:1] == ["chain"]:
                chain = words[1]
            if f'comment "{tag}"' in line and "# handle" in line:
                handle = line.rsplit("# handle", 1)[1].strip()
                self.run(
                    ["nft", "delete", "rule", "inet", self.lab.name, chain, "handle", handle],
                    check=False,
                )

    def link_down(self) -> None:
        """Take the host's interface down."""
        self.run(["ip", "link", "set", "eth0", "down"])

    def link_up(self) -> None:
        """Bring the host's interface back up (and its default route, if any)."""
        self.run(["ip", "link", "set", "eth0", "up"])
        if self.gateway:
            self.run(["ip", "route", "replace", "default", "via", self.gateway], check=False)

    def block_udp(self, peer: Host | None = None) -> None:
        """Drop UDP to and from ``peer`` (or every lab address); loopback is untouched."""
        target = peer.address if peer else f"{SUBNET}.0.0/15"
        self._add_rules(
            "block-udp",
            [
                (
                    "input",
                    "iifname",
                    "eth0",
                    "ip",
                    "saddr",
                    target,
                    "meta",
                    "l4proto",
                    "udp",
                    "drop",
                ),
                (
                    "output",
                    "oifname",
                    "eth0",
                    "ip",
                    "daddr",
                    target,
                    "meta",
                    "l4proto",
                    "udp",
                    "drop",
                ),
            ],
        )

    def unblock_udp(self) -> None:
        """Undo block_udp."""
        self._remove_rules("block-udp")

    def block_multicast(self) -> None:
        """Drop IPv4 multicast in and out on the lab interface."""
        self._add_rules(
            "block-mcast",
            [
                ("input", "iifname", "eth0", "ip", "daddr", "224.0.0.0/4", "drop"),
                ("output", "oifname", "eth0", "ip", "daddr", "224.0.0.0/4", "drop"),
            ],
        )

    def unblock_multicast(self) -> None:
        """Undo block_multicast."""
        self._remove_rules("block-mcast")

    def loss(self, percent: int) -> None:
        """Drop ``percent`` % of packets at random in both directions."""
        if not 0 < percent < 100:
            raise ValueError("loss percent must be in 1..99")
        self._add_rules(
            "loss",
            [
                (
                    "input",
                    "iifname",
                    "eth0",
                    "numgen",
                    "random",
                    "mod",
                    "100",
                    "<",
                    str(percent),
                    "drop",
                ),
                (
                    "output",
                    "oifname",
                    "eth0",
                    "numgen",
                    "random",
                    "mod",
                    "100",
                    "<",
                    str(percent),
                    "drop",
                ),
            ],
        )

    def no_loss(self) -> None:
        """Undo loss."""
        self._remove_rules("loss")

    def rate_limit(self, rate: str = "1gbit", burst: str = "256kb", latency: str = "50ms") -> None:
        """Shape egress of the host's interface with a token bucket (tc tbf)."""
        self.run(
            [
                "tc",
                "qdisc",
                "replace",
                "dev",
                "eth0",
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                burst,
                "latency",
                latency,
            ]
        )

    def no_rate_limit(self) -> None:
        """Undo rate_limit."""
        self.run(["tc", "qdisc", "del", "dev", "eth0", "root"], check=False)

    @contextlib.contextmanager
    def fault(self, on: str, *args: Any) -> Iterator[None]:
        """``with host.fault("block_udp"): ...`` applies a fault and always undoes it."""
        undo = {
            "link_down": self.link_up,
            "block_udp": self.unblock_udp,
            "block_multicast": self.unblock_multicast,
            "loss": self.no_loss,
            "rate_limit": self.no_rate_limit,
        }[on]
        getattr(self, on)(*args)
        try:
            yield
        finally:
            undo()


@dataclass
class Lab:
    """A set of hosts on one bridge (or two subnets joined by a router)."""

    name: str
    hosts: list[Host] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    router: Host | None = None
    closed: bool = False

    @classmethod
    def create(cls, n: int, *, subnets: int = 1) -> Lab:
        """N hosts; with ``subnets=2`` hosts alternate between 198.18.0.0/24 and 198.18.1.0/24
        and a router namespace joins them."""
        reason = available()
        if reason:
            raise LabError(reason)
        sweep_stale()
        # The creating pid is in the name so a later sweep knows when it is stale.
        lab = cls(name=f"{PREFIX}-{os.getpid()}-{secrets.token_hex(3)}")
        _LIVE.add(lab)
        try:
            lab._build(n, subnets)
        except BaseException:
            lab.close()
            raise
        return lab

    def _ns(self, role: str) -> str:
        ns = f"{self.name}-{role}"
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def _build(self, n: int, subnets: int) -> None:
        if subnets not in (1, 2):
            raise ValueError("subnets must be 1 or 2")
        bridge_ns = self._ns("br")
        for s in range(subnets):
            br = f"br{s}"
            sh("ip", "-n", bridge_ns, "link", "add", br, "type", "bridge", "mcast_snooping", "0")
            sh("ip", "-n", bridge_ns, "link", "set", br, "up")
        if subnets == 2:
            rns = self._ns("rt")
            self.router = Host(self, "router", rns, f"{SUBNET}.0.254", 24)
            for s in range(2):
                self._veth(bridge_ns, f"br{s}", rns, f"eth{s}", f"r{s}")
                sh("ip", "-n", rns, "addr", "add", f"{SUBNET}.{s}.254/24", "dev", f"eth{s}")
                sh("ip", "-n", rns, "link", "set", f"eth{s}", "up")
            sh("ip", "netns", "exec", rns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for i in range(n):
            s = i % subnets
            ns = self._ns(f"h{i}")
            address = f"{SUBNET}.{s}.{i + 1}"
            self._veth(bridge_ns, f"br{s}", ns, "eth0", f"h{i}")
            sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up", "multicast", "on")
            gateway = f"{SUBNET}.{s}.254" if subnets == 2 else None
            if gateway:
                sh("ip", "-n", ns, "route", "add", "default", "via", gateway)
            else:
                # mDNS and other multicast leave through the lab interface.
                sh("ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
            self.hosts.append(Host(self, f"h{i}", ns, address, 24, gateway))

    def _veth(self, bridge_ns: str, bridge: str, ns: str, ifname: str, tag: str) -> None:
        outside = f"v{secrets.token_hex(4)}"
        inside = f"i{secrets.token_hex(4)}"
        sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        sh("ip", "link", "set", outside, "netns", bridge_ns)
        sh("ip", "link", "set", inside, "netns", ns)
        sh("ip", "-n", ns, "link", "set", inside, "name", ifname)
        sh("ip", "-n", bridge_ns, "link", "set", outside, "master", bridge)
        sh("ip", "-n", bridge_ns, "link", "set", outside, "up")
        del tag

    def block_udp_between_subnets(self) -> None:
        """On the router: forward TCP but drop UDP between the two subnets."""
        if self.router is None:
            raise LabError("this lab has one subnet")
        r = self.router
        r.run(["nft", "add", "table", "inet", self.name])
        r.run(
            [
                "nft",
                "add",
                "chain",
                "inet",
                self.name,
                "forward",
                "{ type filter hook forward priority 0 ; policy accept ; }",
            ]
        )
        r.run(
            ["nft", "add", "rule", "inet", self.name, "forward", "meta", "l4proto", "udp", "drop"]
        )

    def close(self) -> None:
        """Stop every process and remove every namespace (idempotent)."""
        if self.closed:
            return
        self.closed = True
        for host in self.hosts:
            with contextlib.suppress(Exception):
                host.stop_processes()
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
        _LIVE.discard(self)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __hash__(self) -> int:
        return hash(self.name)


_LIVE: set[Lab] = set()


def _close_all() -> None:
    for lab in list(_LIVE):
        lab.close()


atexit.register(_close_all)


def _on_signal(signum: int, frame: object) -> None:
    _close_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


for _sig in (signal.SIGTERM, signal.SIGHUP):
    if signal.getsignal(_sig) in (signal.SIG_DFL, None):
        signal.signal(_sig, _on_signal)
