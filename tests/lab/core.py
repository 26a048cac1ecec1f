"""The Lab: hosts on bridges joined by a router, its faults, its cleanup, and close-on-signal."""

from __future__ import annotations

import asyncio
import atexit
import functools
import ipaddress
import os
import signal
import subprocess
import threading
from collections.abc import Sequence
from types import FrameType, TracebackType
from typing import Any

from tests.lab import netsetup
from tests.lab.host import Fault, Host, _rate_bytes
from tests.lab.shell import (
    IFNAME,
    LAB_NET,
    MAX_SUBNETS,
    MCAST_NET,
    Direction,
    LabError,
    _new_name,
    available,
    log,
    netns_list,
    sh,
    stop_processes,
    sweep_stale,
)

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
    # (the namespaces, bridges, router and hosts are made by netsetup.build)

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
            netsetup.build(lab, where, subnets)
            if not udp_routed:
                lab.block_udp_between_subnets()
        except BaseException:
            lab.close(raise_errors=False)
            raise
        return lab

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
    # (each host's table and chains are made on first use by netsetup.nft)

    def _rule_fault(self, kind: str, host: Host, rules: Sequence[tuple[str, str]]) -> Fault:
        """Add ``(chain, rule)`` pairs to ``host``; the Fault deletes exactly those rules."""
        self._seq += 1
        tag = f"{kind}-{self._seq}"
        script = "".join(
            f'add rule inet {self.name} {chain} {rule} comment "{tag}"\n' for chain, rule in rules
        )
        handles = netsetup.nft(self, host, script)
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
        stop_processes(procs, aprocs, self.namespaces)

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
