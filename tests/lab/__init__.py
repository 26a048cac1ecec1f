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

The library is split by job: ``shell`` (running commands, namespaces, PIDs, probe and
sweep), ``host`` (``Host`` and ``Fault``), ``netsetup`` (building the namespaces,
bridges, router and nft tables) and ``core`` (``Lab`` and the close-on-signal registry).
Everything is re-exported here, so ``from tests.lab import ...`` is the import to use.
"""

from __future__ import annotations

from tests.lab.core import _HANDLED, _LIVE, Lab, _install_handlers, _on_signal, _previous, close_all
from tests.lab.host import Fault, Host, _rate_bytes
from tests.lab.shell import (
    _NAME_RE,
    CMD_TIMEOUT,
    IFNAME,
    LAB_NET,
    MAX_SUBNETS,
    MCAST_NET,
    PREFIX,
    STOP_GRACE,
    Direction,
    LabError,
    _kill,
    _new_name,
    _ns_id,
    _start_ticks,
    available,
    log,
    netns_list,
    pids_in,
    probe,
    sh,
    stop_processes,
    sweep_stale,
)

# The import surface of the lab (private names too: the self-tests use some).
__all__ = [
    "CMD_TIMEOUT",
    "IFNAME",
    "LAB_NET",
    "MAX_SUBNETS",
    "MCAST_NET",
    "PREFIX",
    "STOP_GRACE",
    "_HANDLED",
    "_LIVE",
    "_NAME_RE",
    "Direction",
    "Fault",
    "Host",
    "Lab",
    "LabError",
    "_install_handlers",
    "_kill",
    "_new_name",
    "_ns_id",
    "_on_signal",
    "_previous",
    "_rate_bytes",
    "_start_ticks",
    "available",
    "close_all",
    "log",
    "netns_list",
    "pids_in",
    "probe",
    "sh",
    "stop_processes",
    "sweep_stale",
]
