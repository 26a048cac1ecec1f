"""Building a lab: its namespaces, bridges, router, hosts, and the per-host nft tables of faults."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.lab.host import Host
from tests.lab.shell import IFNAME, MCAST_NET, sh

if TYPE_CHECKING:
    from tests.lab.core import Lab


def add_netns(lab: Lab, ns: str) -> None:
    """A new namespace of ``lab`` (recorded for close), IPv6 off, loopback up."""
    sh("ip", "netns", "add", ns)
    lab._resources.append(("netns", ns))
    # IPv6 off on lab interfaces (they inherit "default"); loopback keeps ::1.
    sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
    sh("ip", "-n", ns, "link", "set", "lo", "up")


def add_veth(lab: Lab, port: str, bridge: str, ns: str, ifname: str) -> None:
    """A veth pair made inside the lab: ``port`` on ``bridge``, ``ifname`` in ``ns``."""
    br = lab.bridge_ns
    sh("ip", "-n", br, "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns)
    lab._resources.append(("link", br, port))
    sh("ip", "-n", br, "link", "set", port, "master", bridge, "up")


def build(lab: Lab, where: list[int], subnets: int) -> None:
    """The bridge namespace with one bridge per subnet, the router if several, and the hosts."""
    br = lab.bridge_ns
    add_netns(lab, br)
    for s in range(subnets):
        sh("ip", "-n", br, "link", "add", f"br{s}", "type", "bridge", "mcast_snooping", "0")
        lab._resources.append(("link", br, f"br{s}"))
        sh("ip", "-n", br, "link", "set", f"br{s}", "up")
    if subnets > 1:
        rt = f"{lab.name}-rt"
        add_netns(lab, rt)
        batch = []
        for s in range(subnets):
            add_veth(lab, f"p-r{s}", f"br{s}", rt, f"eth{s}")
            batch.append(f"addr add {lab.subnet_address(s, 254)}/24 dev eth{s}")
            batch.append(f"link set eth{s} up")
        sh("ip", "-n", rt, "-batch", "-", stdin="\n".join(batch) + "\n")
        sh("ip", "netns", "exec", rt, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        lab.router = Host(lab, "router", rt, lab.subnet_address(0, 254))
    for i, s in enumerate(where):
        ns = f"{lab.name}-h{i}"
        add_netns(lab, ns)
        add_veth(lab, f"p-h{i}", f"br{s}", ns, IFNAME)
        address = lab.subnet_address(s, i + 1)
        gateway = lab.subnet_address(s, 254) if subnets > 1 else None
        routes: list[tuple[str, ...]] = [(MCAST_NET, "dev", IFNAME)]
        if gateway:
            routes.append(("default", "via", gateway, "dev", IFNAME))
        batch = [f"addr add {address}/24 dev {IFNAME}", f"link set {IFNAME} up"]
        batch += [f"route replace {' '.join(r)}" for r in routes]
        sh("ip", "-n", ns, "-batch", "-", stdin="\n".join(batch) + "\n")
        lab.hosts.append(Host(lab, f"h{i}", ns, address, 24, gateway, f"p-h{i}", tuple(routes)))


def nft(lab: Lab, host: Host, script: str) -> list[str]:
    """Apply an nft script in ``host``'s table (made on first use); the new rules' handles."""
    lab.check_open()
    t = lab.name
    pre = ""
    if host.netns not in lab._tables:
        hooks = ("input", "output", "forward")
        pre = f"add table inet {t}\n" + "".join(
            f"add chain inet {t} {h} {{ type filter hook {h} priority 0 ; policy accept ; }}\n"
            for h in hooks
        )
    out = sh("ip", "netns", "exec", host.netns, "nft", "-e", "-a", "-f", "-", stdin=pre + script)
    if pre:
        lab._tables.add(host.netns)
        lab._resources.append(("nft", host.netns, t))
    return [
        line.rsplit("# handle", 1)[1].strip()
        for line in out.splitlines()
        if line.startswith("add rule") and "# handle" in line
    ]
