"""The network lab: hosts in Linux network namespaces on a bridge, with faults.

Every host is a namespace whose ``eth0`` is one end of a veth pair; the other
end is a port of a bridge that lives in a namespace of its own, so the root
namespace's interfaces are never touched (veths are created directly inside
the lab's namespaces). Addresses come from 198.18.0.0/15; IPv6 is off on lab
interfaces, so lab addresses and loopback are the only ones in use. Faults are
rules in an nft table named after the lab inside a host's namespace, or
``tc tbf`` qdiscs. Everything created is recorded and removed on close, every
process started in a host is stopped by PID, and namespaces left by a crashed
run (creator dead) are swept at the next start.

Use the ``lab`` / ``lab_factory`` fixtures (tests/lab/fixtures.py) or ``Lab``::

    with Lab.create(2) as lab:
        a, b = lab.hosts
        with lab.block_udp(b):
            a.run([...])
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import ipaddress
import logging
import os
import re
import secrets
import shutil
import signal
import string
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal

log = logging.getLogger(__name__)

PREFIX = "hlab"
LAB_NET = ipaddress.ip_network("198.18.0.0/15")
MCAST_NET = "224.0.0.0/4"
CMD_TIMEOUT = 10.0
STOP_GRACE = 3.0
MAX_SUBNETS = 8
IFNAME = "eth0"

# hlab-<creator pid>-<creator start time in clock ticks>-<random>[-<role>]
_NAME_RE = re.compile(rf"^{PREFIX}-(\d+)-(\d+)-([a-z]{{4}})(?:-[a-z0-9]+)?$")

Direction = Literal["both", "out", "in"]


class LabError(RuntimeError):
    """A lab command failed, or the lab cannot run here."""


# ------------------------------------------------------------------ helpers


def sh(*argv: str, check: bool = True, timeout: float = CMD_TIMEOUT, stdin: str = "") -> str:
    """Run a command (argv, no shell) and return its stdout; LabError on failure when ``check``."""
    log.debug("lab: %s", argv)
    done = subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def netns_list() -> list[str]:
    """Names of all named network namespaces (``ip netns list``)."""
    out = sh("ip", "netns", "list", check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _ns_id(ns: str) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/run/netns/{ns}")
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def pids_in(namespaces: Iterable[str]) -> list[int]:
    """PIDs of live (not zombie) processes whose network namespace is one of ``namespaces``."""
    ids = {i for i in (_ns_id(ns) for ns in namespaces) if i is not None}
    if not ids:
        return []
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:
            continue  # gone, or a zombie
        if (st.st_dev, st.st_ino) in ids:
            found.append(int(entry.name))
    return found


def _kill(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _new_name() -> str:
    pid = os.getpid()
    tag = "".join(secrets.choice(string.ascii_lowercase) for _ in range(4))
    return f"{PREFIX}-{pid}-{_start_ticks(pid)}-{tag}"


def probe() -> str | None:
    """None if the lab can run here, else the reason it cannot (not cached)."""
    if os.geteuid() != 0:
        return "the network lab needs root (network namespaces, nft, tc)"
    for tool in ("ip", "nft", "tc"):
        if shutil.which(tool) is None:
            return f"the network lab needs `{tool}` (iproute2 / nftables)"
    ns = f"{_new_name()}-probe"
    try:
        tbf = ["tbf", "rate", "1mbit", "burst", "16kb", "latency", "50ms"]
        steps: list[tuple[str, list[str]]] = [
            ("ip netns", ["ip", "netns", "add", ns]),
            ("veth", ["ip", "-n", ns, "link", "add", "p0", "type", "veth", "peer", "name", "p1"]),
            ("bridge", ["ip", "-n", ns, "link", "add", "b0", "type", "bridge"]),
            ("nftables", ["ip", "netns", "exec", ns, "nft", "add", "table", "inet", "probe"]),
            ("tc tbf", ["tc", "-n", ns, "qdisc", "add", "dev", "p0", "root", *tbf]),
        ]
        for what, argv in steps:
            try:
                sh(*argv)
            except (LabError, subprocess.TimeoutExpired) as exc:
                return f"the network lab needs {what} support: {exc}"
    finally:
        sh("ip", "netns", "del", ns, check=False)
    return None


@functools.cache
def available() -> str | None:
    """None if the lab can run here, else the reason it cannot (probed once)."""
    return probe()


def sweep_stale() -> list[str]:
    """Remove namespaces of labs whose creating process is gone (killing what runs inside)."""
    stale = []
    for ns in netns_list():
        m = _NAME_RE.match(ns)
        if m is None or _start_ticks(int(m[1])) == int(m[2]):
            continue  # not ours, or its creator is still alive
        stale.append(ns)
    if stale:
        _kill(pids_in(stale), signal.SIGKILL)
        for ns in stale:
            log.warning("lab: removing stale namespace %s", ns)
            sh("ip", "netns", "del", ns, check=False)
    return stale


def _rate_bytes(rate: str) -> float:
    """Bytes per second of a tc rate such as ``1gbit``, ``8mbit``, ``1mibps``."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([a-z]*)", rate.lower())
    if m is None:
        raise ValueError(f"not a tc rate: {rate!r}")
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
    iec = {"ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
    unit = m[2] or "bit"
    for suffix, per in (("bit", 1 / 8), ("bps", 1.0)):
        if unit.endswith(suffix):
            mult = {**scale, **iec}.get(unit.removesuffix(suffix))
            if mult is not None:
                return float(m[1]) * mult * per
    raise ValueError(f"unknown tc rate unit in {rate!r}")


# ------------------------------------------------------------------ faults


class Fault:
    """A fault in effect: ``undo()`` (idempotent) removes it; as a context manager it undoes on exit."""

    def __init__(self, kind: str, host: Host, undo: Callable[[], None]) -> None:
        """Record an applied fault and how to undo it."""
        self.kind = kind
        self.host = host
        self._undo = undo
        self.active = True

    def undo(self) -> None:
        """Remove the fault (no-op if already undone)."""
        if self.active:
            self.active = False
            self._undo()

    def __enter__(self) -> Fault:
        """The fault is already applied; entering does nothing."""
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Undo the fault."""
        self.undo()

    def __repr__(self) -> str:
        """Kind, host and state."""
        return f"<Fault {self.kind} on {self.host.name} {'active' if self.active else 'undone'}>"


# ------------------------------------------------------------------ hosts


@dataclass(frozen=True, eq=False)
class Host:
    """One lab host: a namespace with ``eth0`` on a lab bridge (``lab.router`` is one too)."""

    lab: Lab = field(repr=False)
    name: str
    netns: str
    address: str
    prefix: int = 24
    gateway: str | None = None
    bridge_port: str = ""
    routes: tuple[tuple[str, ...], ...] = ()
    procs: list[subprocess.Popen[Any]] = field(default_factory=list, repr=False)
    aprocs: list[asyncio.subprocess.Process] = field(default_factory=list, repr=False)

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside this host."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = CMD_TIMEOUT,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion inside the host (text output, killed after ``timeout`` s)."""
        self.lab.check_open()
        done = subprocess.run(
            self.argv(argv),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise LabError(f"[{self.name}] {' '.join(argv)}: {done.stderr.strip()}")
        return done

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process inside the host; tracked, stopped by PID when the lab closes."""
        self.lab.check_open()
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc: subprocess.Popen[Any] = subprocess.Popen(self.argv(argv), **kwargs)
        self.procs.append(proc)
        return proc

    async def spawn(self, argv: Sequence[str], **kwargs: Any) -> asyncio.subprocess.Process:
        """Start a process inside the host (asyncio); tracked, stopped by PID on close."""
        self.lab.check_open()
        kwargs.setdefault("stdin", asyncio.subprocess.DEVNULL)
        proc = await asyncio.create_subprocess_exec(*self.argv(argv), **kwargs)
        self.aprocs.append(proc)
        return proc

    # Faults on this host (see the Lab methods of the same names).

    def link_down(self, *, at_bridge: bool = False) -> Fault:
        """Take this host's link down."""
        return self.lab.link_down(self, at_bridge=at_bridge)

    def link_up(self) -> None:
        """Bring this host's link back up."""
        self.lab.link_up(self)

    def block_udp(self, peer: Host | str | None = None) -> Fault:
        """Drop UDP to and from ``peer`` (default: everyone)."""
        return self.lab.block_udp(self, peer)

    def unblock_udp(self) -> None:
        """Undo every block_udp on this host."""
        self.lab.undo_faults(self, "block_udp")

    def block_multicast(self) -> Fault:
        """Drop IPv4 multicast in and out."""
        return self.lab.block_multicast(self)

    def unblock_multicast(self) -> None:
        """Undo every block_multicast on this host."""
        self.lab.undo_faults(self, "block_multicast")

    def loss(self, percent: int) -> Fault:
        """Drop ``percent`` % of packets at random, each direction."""
        return self.lab.loss(self, percent)

    def no_loss(self) -> None:
        """Undo every loss on this host."""
        self.lab.undo_faults(self, "loss")

    def rate_limit(
        self,
        rate: str = "1gbit",
        burst: str | None = None,
        latency: str = "50ms",
        direction: Direction = "both",
    ) -> Fault:
        """Shape this host's link with tc tbf."""
        return self.lab.rate_limit(self, rate, burst, latency, direction)

    def no_rate_limit(self) -> None:
        """Undo every rate_limit on this host."""
        self.lab.undo_faults(self, "rate_limit")

    def fault(self, kind: str, *args: Any) -> Fault:
        """``with host.fault("block_udp"): ...``: the Lab fault ``kind`` on this host."""
        kinds = ("link_down", "block_udp", "block_multicast", "loss", "rate_limit")
        if kind not in kinds:
            raise ValueError(f"unknown fault {kind!r}; one of {kinds}")
        made: Fault = getattr(self.lab, kind)(self, *args)
        return made


# ------------------------------------------------------------------ the lab


class Lab:
    """Hosts on one bridge, or on several subnets (one bridge each) joined by a router."""

    def __init__(self, name: str) -> None:
        """An empty lab; use ``Lab.create``."""
        self.name = name
        self.hosts: list[Host] = []
        self.router: Host | None = None
        self.bridge_ns = f"{name}-br"
        self.closed = False
        self._resources: list[tuple[str, ...]] = []  # ("netns", ns) | ("link"|"nft"|"qdisc", ns, x)
        self._faults: list[Fault] = []
        self._tables: set[str] = set()
        self._seq = 0

    # ------------------------------------------------------------ building

    @classmethod
    def create(
        cls,
        n: int = 2,
        *,
        subnets: int = 1,
        layout: Sequence[int] | None = None,
        udp_routed: bool = True,
    ) -> Lab:
        """``n`` hosts; with ``subnets`` > 1, host i is on 198.18.<i % subnets>.0/24 (or
        ``layout[i]``) and a router joins the subnets (dropping UDP unless ``udp_routed``)."""
        reason = available()
        if reason:
            raise LabError(reason)
        if not 1 <= subnets <= MAX_SUBNETS:
            raise ValueError(f"subnets must be in 1..{MAX_SUBNETS}")
        where = list(layout) if layout is not None else [i % subnets for i in range(n)]
        if len(where) != n or not all(0 <= s < subnets for s in where) or not 1 <= n <= 200:
            raise ValueError("need 1..200 hosts, each on a subnet in range(subnets)")
        _install_handlers()
        sweep_stale()
        lab = cls(_new_name())
        _LIVE[lab.name] = lab
        try:
            lab._build(where, subnets)
            if not udp_routed:
                lab.block_udp_between_subnets()
        except BaseException:
            lab.close(raise_errors=False)
            raise
        return lab

    def _netns(self, ns: str) -> None:
        sh("ip", "netns", "add", ns)
        self._resources.append(("netns", ns))
        # IPv6 off on lab interfaces (they inherit "default"); loopback keeps ::1.
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
        sh("ip", "-n", ns, "link", "set", "lo", "up")

    def _veth(self, port: str, bridge: str, ns: str, ifname: str) -> None:
        """A veth pair made inside the lab: ``port`` on ``bridge``, ``ifname`` in ``ns``."""
        br = self.bridge_ns
        sh("ip", "-n", br, "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns)
        self._resources.append(("link", br, port))
        sh("ip", "-n", br, "link", "set", port, "master", bridge, "up")

    def _build(self, where: list[int], subnets: int) -> None:
        br = self.bridge_ns
        self._netns(br)
        for s in range(subnets):
            sh("ip", "-n", br, "link", "add", f"br{s}", "type", "bridge", "mcast_snooping", "0")
            self._resources.append(("link", br, f"br{s}"))
            sh("ip", "-n", br, "link", "set", f"br{s}", "up")
        if subnets > 1:
            rt = f"{self.name}-rt"
            self._netns(rt)
            batch = []
            for s in range(subnets):
                self._veth(f"p-r{s}", f"br{s}", rt, f"eth{s}")
                batch.append(f"addr add {self.subnet_address(s, 254)}/24 dev eth{s}")
                batch.append(f"link set eth{s} up")
            sh("ip", "-n", rt, "-batch", "-", stdin="\n".join(batch) + "\n")
            sh("ip", "netns", "exec", rt, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            self.router = Host(self, "router", rt, self.subnet_address(0, 254))
        for i, s in enumerate(where):
            ns = f"{self.name}-h{i}"
            self._netns(ns)
            self._veth(f"p-h{i}", f"br{s}", ns, IFNAME)
            address = self.subnet_address(s, i + 1)
            gateway = self.subnet_address(s, 254) if subnets > 1 else None
            routes: list[tuple[str, ...]] = [(MCAST_NET, "dev", IFNAME)]
            if gateway:
                routes.append(("default", "via", gateway, "dev", IFNAME))
            batch = [f"addr add {address}/24 dev {IFNAME}", f"link set {IFNAME} up"]
            batch += [f"route replace {' '.join(r)}" for r in routes]
            sh("ip", "-n", ns, "-batch", "-", stdin="\n".join(batch) + "\n")
            self.hosts.append(
                Host(self, f"h{i}", ns, address, 24, gateway, f"p-h{i}", tuple(routes))
            )

    @staticmethod
    def subnet_address(subnet: int, host: int) -> str:
        """198.18.<subnet>.<host>, checked to be inside the lab range."""
        addr = ipaddress.ip_address(f"198.18.{subnet}.{host}")
        if addr not in LAB_NET:
            raise ValueError(f"{addr} is outside {LAB_NET}")
        return str(addr)

    @property
    def namespaces(self) -> list[str]:
        """Every namespace of this lab that exists now (recorded at creation)."""
        return [r[1] for r in self._resources if r[0] == "netns"]

    def check_open(self) -> None:
        """LabError if the lab has been closed."""
        if self.closed:
            raise LabError(f"lab {self.name} is closed")

    # ------------------------------------------------------------ nft

    def _nft(self, host: Host, script: str) -> list[str]:
        """Apply an nft script in ``host``'s table (made on first use); the new rules' handles."""
        self.check_open()
        t = self.name
        pre = ""
        if host.netns not in self._tables:
            hooks = ("input", "output", "forward")
            pre = f"add table inet {t}\n" + "".join(
                f"add chain inet {t} {h} {{ type filter hook {h} priority 0 ; policy accept ; }}\n"
                for h in hooks
            )
        out = sh(
            "ip", "netns", "exec", host.netns, "nft", "-e", "-a", "-f", "-", stdin=pre + script
        )
        if pre:
            self._tables.add(host.netns)
            self._resources.append(("nft", host.netns, t))
        return [
            line.rsplit("# handle", 1)[1].strip()
            for line in out.splitlines()
            if line.startswith("add rule") and "# handle" in line
        ]

    def _rule_fault(self, kind: str, host: Host, rules: Sequence[tuple[str, str]]) -> Fault:
        """Add ``(chain, rule)`` pairs to ``host``; the Fault deletes exactly those rules."""
        self._seq += 1
        tag = f"{kind}-{self._seq}"
        script = "".join(
            f'add rule inet {self.name} {chain} {rule} comment "{tag}"\n' for chain, rule in rules
        )
        handles = self._nft(host, script)
        if len(handles) != len(rules):
            raise LabError(f"nft did not echo the handles of {tag}: {handles}")
        chains = [chain for chain, _ in rules]

        def undo() -> None:
            if self.closed:
                return
            script = "".join(
                f"delete rule inet {self.name} {c} handle {h}\n"
                for c, h in zip(chains, handles, strict=True)
            )
            sh("ip", "netns", "exec", host.netns, "nft", "-f", "-", stdin=script)

        return self._track(Fault(kind, host, undo))

    def _track(self, fault: Fault) -> Fault:
        self._faults.append(fault)
        return fault

    def undo_faults(self, host: Host, kind: str) -> None:
        """Undo every active fault of ``kind`` on ``host``."""
        for f in self._faults:
            if f.host is host and f.kind == kind:
                f.undo()

    # ------------------------------------------------------------ faults

    def link_down(self, host: Host, *, at_bridge: bool = False) -> Fault:
        """Take ``host``'s interface down (or, ``at_bridge``, its bridge port: carrier lost)."""
        self.check_open()
        if at_bridge:
            sh("ip", "-n", self.bridge_ns, "link", "set", host.bridge_port, "down")
        else:
            sh("ip", "-n", host.netns, "link", "set", IFNAME, "down")
        return self._track(Fault("link_down", host, lambda: self._link_up(host)))

    def link_up(self, host: Host) -> None:
        """Bring ``host``'s link up again (ending any link_down on it)."""
        self.undo_faults(host, "link_down")
        self._link_up(host)

    def _link_up(self, host: Host) -> None:
        if self.closed:
            return
        sh("ip", "-n", self.bridge_ns, "link", "set", host.bridge_port, "up")
        # Taking a link down flushes its routes; put ours back.
        batch = [f"link set {IFNAME} up"] + [f"route replace {' '.join(r)}" for r in host.routes]
        sh("ip", "-n", host.netns, "-batch", "-", stdin="\n".join(batch) + "\n")

    def block_udp(self, host: Host, peer: Host | str | None = None) -> Fault:
        """Drop UDP in and out of ``host`` (only to/from ``peer`` if given); loopback is untouched."""
        match = ""
        if peer is not None:
            addr = peer.address if isinstance(peer, Host) else peer
            if ipaddress.ip_address(addr) not in LAB_NET:
                raise ValueError(f"{addr} is not a lab address")
            match = f"ip saddr {addr} "
        out_match = match.replace("saddr", "daddr")
        return self._rule_fault(
            "block_udp",
            host,
            [
                ("input", f'iifname "{IFNAME}" {match}meta l4proto udp drop'),
                ("output", f'oifname "{IFNAME}" {out_match}meta l4proto udp drop'),
            ],
        )

    def block_multicast(self, host: Host) -> Fault:
        """Drop IPv4 multicast in and out of ``host``'s interface (unicast is untouched)."""
        return self._rule_fault(
            "block_multicast",
            host,
            [
                ("input", f'iifname "{IFNAME}" ip daddr {MCAST_NET} drop'),
                ("output", f'oifname "{IFNAME}" ip daddr {MCAST_NET} drop'),
            ],
        )

    def loss(self, host: Host, percent: int) -> Fault:
        """Drop ``percent`` % of ``host``'s packets at random, in and out (nft numgen)."""
        if not 0 < percent < 100:
            raise ValueError("loss percent must be in 1..99")
        rule = f"numgen random mod 100 < {percent} drop"
        return self._rule_fault(
            "loss",
            host,
            [("input", f'iifname "{IFNAME}" {rule}'), ("output", f'oifname "{IFNAME}" {rule}')],
        )

    def rate_limit(
        self,
        host: Host,
        rate: str = "1gbit",
        burst: str | None = None,
        latency: str = "50ms",
        direction: Direction = "both",
    ) -> Fault:
        """Shape ``host``'s link with tc tbf: "out" is its egress, "in" its bridge port's egress."""
        self.check_open()
        if burst is None:  # 5 ms worth of tokens, at least 16 KiB
            burst = str(max(16384, int(_rate_bytes(rate) * 0.005)))
        else:
            _rate_bytes(rate)  # validate
        where = []
        if direction in ("both", "out"):
            where.append((host.netns, IFNAME))
        if direction in ("both", "in"):
            where.append((self.bridge_ns, host.bridge_port))
        if not where:
            raise ValueError("direction must be 'both', 'out' or 'in'")
        tbf = ["tbf", "rate", rate, "burst", burst, "latency", latency]
        for ns, dev in where:
            sh("tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", *tbf)
            self._resources.append(("qdisc", ns, dev))

        def undo() -> None:
            for ns, dev in where:
                self._drop_resource(("qdisc", ns, dev))

        return self._track(Fault("rate_limit", host, undo))

    def block_udp_between_subnets(self) -> Fault:
        """On the router: keep forwarding TCP but drop UDP between the subnets."""
        if self.router is None:
            raise LabError("this lab has one subnet and no router")
        return self._rule_fault("block_udp", self.router, [("forward", "meta l4proto udp drop")])

    # ------------------------------------------------------------ closing

    def _drop_resource(self, res: tuple[str, ...]) -> None:
        """Delete one recorded resource (if it is still recorded)."""
        if res not in self._resources:
            return
        self._resources.remove(res)
        kind, ns, *rest = res
        if kind == "netns":
            sh("ip", "netns", "del", ns)
        elif kind == "link":
            sh("ip", "-n", ns, "link", "del", rest[0])
        elif kind == "nft":
            sh("ip", "netns", "exec", ns, "nft", "delete", "table", "inet", rest[0])
            self._tables.discard(ns)
        elif kind == "qdisc":
            sh("tc", "-n", ns, "qdisc", "del", "dev", rest[0], "root")

    def _stop_processes(self) -> None:
        """SIGTERM tracked processes and anything else in our namespaces; SIGKILL after a grace."""
        everyone = [h for h in (*self.hosts, self.router) if h is not None]
        procs = [p for h in everyone for p in h.procs]
        aprocs = [p for h in everyone for p in h.aprocs]
        namespaces = self.namespaces
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for ap in aprocs:
            if ap.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    ap.terminate()
        _kill(pids_in(namespaces), signal.SIGTERM)

        def settled() -> bool:
            return all(p.poll() is not None for p in procs) and not pids_in(namespaces)

        deadline = time.monotonic() + STOP_GRACE
        while not settled() and time.monotonic() < deadline:
            time.sleep(0.02)
        for p in procs:
            if p.poll() is None:
                p.kill()
        _kill(pids_in(namespaces), signal.SIGKILL)
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=2)
            for stream in (p.stdin, p.stdout, p.stderr):
                if stream is not None:
                    stream.close()
        deadline = time.monotonic() + 2
        while pids_in(namespaces) and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self, *, raise_errors: bool = True) -> None:
        """Stop every process and remove every link, rule and namespace (idempotent)."""
        if self.closed:
            return
        self.closed = True
        errors: list[str] = []
        try:
            self._stop_processes()
        except (OSError, subprocess.SubprocessError) as exc:
            errors.append(f"stopping processes: {exc}")
        for f in self._faults:
            f.active = False
        for res in reversed(list(self._resources)):
            try:
                self._drop_resource(res)
            except (LabError, subprocess.TimeoutExpired) as exc:
                if res[0] == "netns":
                    errors.append(str(exc))
        _LIVE.pop(self.name, None)
        left = [ns for ns in netns_list() if ns.startswith(f"{self.name}-")]
        if left:
            errors.append(f"namespaces left: {left}")
        if errors and raise_errors:
            raise LabError(f"lab {self.name} cleanup: {'; '.join(errors)}")
        for e in errors:
            log.error("lab %s cleanup: %s", self.name, e)

    async def aclose(self) -> None:
        """``close`` from a coroutine (in a thread, so the event loop keeps reaping children)."""
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Lab:
        """The lab itself."""
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the lab."""
        self.close(raise_errors=et is None)

    def __repr__(self) -> str:
        """Name, hosts and state."""
        state = "closed" if self.closed else "open"
        return f"<Lab {self.name} {[h.address for h in self.hosts]} {state}>"


# ------------------------------------------------------------------ last-resort cleanup

_LIVE: dict[str, Lab] = {}
_HANDLED = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
_previous: dict[int, Any] = {}


def close_all() -> None:
    """Close every lab of this process (atexit, signals)."""
    for lab in list(_LIVE.values()):
        lab.close(raise_errors=False)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """Clean up, then let the signal do what it would have done."""
    close_all()
    prev = _previous.get(signum, signal.SIG_DFL)
    if callable(prev):
        prev(signum, frame)  # SIGINT: raises KeyboardInterrupt
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


@functools.cache
def _install_handlers() -> None:
    """atexit always; signal handlers from the main thread (chaining what was there)."""
    atexit.register(close_all)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in _HANDLED:
        prev = signal.getsignal(sig)
        if prev == signal.SIG_IGN:
            continue  # whoever started us wants it ignored (e.g. SIGINT in a background job)
        _previous[sig] = prev
        signal.signal(sig, _on_signal)
