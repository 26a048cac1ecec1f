"""Lab hosts (a namespace on a bridge, running tracked processes) and the faults put on them."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from tests.lab.shell import CMD_TIMEOUT, Direction, LabError

if TYPE_CHECKING:
    from tests.lab.core import Lab


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
