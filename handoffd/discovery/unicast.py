"""Legacy unicast DNS-SD queries, for networks that block multicast (``unicast_peers``)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from typing import Any

# Not re-exported by zeroconf's __all__, but stable for years.
from zeroconf._dns import DNSAddress, DNSPointer, DNSQuestion, DNSService, DNSText
from zeroconf._protocol.incoming import DNSIncoming
from zeroconf._protocol.outgoing import DNSOutgoing

from handoffd.discovery.dns import CLASS_IN, FLAGS_QUERY, MDNS_PORT, TYPE_PTR
from handoffd.discovery.txt import SERVICE_TYPE, parse_txt_record

logger = logging.getLogger("handoffd.discovery")

UNICAST_WAIT = 1.0
MAX_UNICAST_PACKETS = 16


def parse_unicast_peer(text: str) -> tuple[str, int] | None:
    """``HOST`` or ``HOST:PORT`` (IPv6 in brackets) → (host, port); None if malformed."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ("" if not rest else "x")
        if not sep:
            return None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host or len(host) > 253 or any(c.isspace() or ord(c) < 32 for c in host):
        return None
    if not port_text:
        return host, MDNS_PORT
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        return None
    return host, int(port_text)


class _Collector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.packets: list[bytes] = []
        self.arrived = asyncio.Event()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if len(self.packets) < MAX_UNICAST_PACKETS:
            self.packets.append(data)
            self.arrived.set()


Found = tuple[str, dict[bytes, bytes | None], tuple[str, ...], int, str]


def _parse_answers(data: bytes) -> list[Found]:
    """Our service's instances in one DNS response (name, TXT props, IPv4s, port, host)."""
    records = DNSIncoming(data).answers()
    found = []
    names = {r.alias for r in records if isinstance(r, DNSPointer) and r.name == SERVICE_TYPE}
    for name in sorted(names)[:MAX_UNICAST_PACKETS]:
        srv = next((r for r in records if isinstance(r, DNSService) and r.name == name), None)
        text = next((r for r in records if isinstance(r, DNSText) and r.name == name), None)
        if srv is None or text is None:
            continue
        props = parse_txt_record(text.text)
        if props is None:
            continue
        addresses = tuple(
            sorted(
                str(ipaddress.IPv4Address(r.address))
                for r in records
                if isinstance(r, DNSAddress) and r.name == srv.server and len(r.address) == 4
            )
        )
        found.append((name, props, addresses, srv.port, srv.server))
    return found


async def unicast_query(address: str, port: int = MDNS_PORT) -> list[Found]:
    """Ask one host for our service type with a legacy unicast query (answered to our port).

    Where multicast is blocked, the answer to a query from port 5353 would go
    out by multicast; one from another port is answered by unicast (RFC 6762
    §6.7). Only one responder per host receives a unicast packet to 5353.
    """
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(UNICAST_WAIT):
            transport, proto = await loop.create_datagram_endpoint(
                _Collector, remote_addr=(address, port)
            )
    except (OSError, TimeoutError):
        return []
    try:
        out = DNSOutgoing(FLAGS_QUERY, multicast=False)
        out.add_question(DNSQuestion(SERVICE_TYPE, TYPE_PTR, CLASS_IN))
        for packet in out.packets():
            transport.sendto(packet)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(UNICAST_WAIT):
                await proto.arrived.wait()
                await asyncio.sleep(0.05)  # answers may span a few packets
    finally:
        transport.close()
    found: list[Found] = []
    for data in proto.packets:
        try:
            found.extend(_parse_answers(data))
        except Exception:  # noqa: BLE001 - hostile bytes: drop the packet, never the loop
            logger.debug("unparsable unicast mDNS answer from %s", address)
    return found
