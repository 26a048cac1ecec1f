"""This host's IPv4 addresses (what discovery advertises and where zeroconf listens)."""

from __future__ import annotations

import ipaddress

import ifaddr


def all_ipv4_addresses() -> frozenset[str]:
    """Every IPv4 address of this host, loopback included."""
    return frozenset(
        ip.ip for adapter in ifaddr.get_adapters() for ip in adapter.ips if isinstance(ip.ip, str)
    )


def local_addresses() -> frozenset[str]:
    """This host's IPv4 addresses other than loopback and link-local (what we advertise)."""
    found = set()
    for text in all_ipv4_addresses():
        addr = ipaddress.IPv4Address(text)
        if not (addr.is_loopback or addr.is_link_local):
            found.add(text)
    return frozenset(found)


def is_ipv4(text: str) -> bool:
    """True if ``text`` is a dotted IPv4 address."""
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True
