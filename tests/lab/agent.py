"""Tiny network agent run inside lab hosts: TCP sink/echo, UDP and multicast send/receive."""

from __future__ import annotations

import socket
import struct
import sys
import time


def tcp_sink(addr: str, port: int) -> None:
    """Accept connections; for each, read to EOF and answer with the byte count."""
    srv = socket.create_server((addr, port))
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        with conn:
            total = 0
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                total += len(chunk)
            conn.sendall(str(total).encode())


def tcp_send(addr: str, port: int, nbytes: int, timeout: float) -> None:
    """Connect, send ``nbytes``, half-close, print the count the sink saw and the seconds."""
    start = time.monotonic()
    with socket.create_connection((addr, port), timeout=timeout) as s:
        block = b"x" * 65536
        left = nbytes
        while left > 0:
            n = min(left, len(block))
            s.sendall(block[:n])
            left -= n
        s.shutdown(socket.SHUT_WR)
        answer = s.recv(64).decode()
    print(f"{answer} {time.monotonic() - start:.3f}", flush=True)


def udp_recv(addr: str, port: int, group: str, seconds: float) -> None:
    """Count datagrams for ``seconds`` (joining ``group`` unless it is '-')."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(("0.0.0.0" if group != "-" else addr, port))
    if group != "-":
        mreq = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(addr))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    print("ready", flush=True)
    s.settimeout(0.2)
    count = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            s.recv(2048)
            count += 1
        except TimeoutError:
            continue
    print(count, flush=True)


def udp_send(src: str, dst: str, port: int, count: int) -> None:
    """Send ``count`` small datagrams from ``src`` to ``dst`` (unicast or a group), paced."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(src))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    for i in range(count):
        s.sendto(f"{i}".encode(), (dst, port))
        if i % 50 == 49:
            time.sleep(0.005)
    print("sent", flush=True)


def main() -> None:
    """Dispatch on argv[1]."""
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "tcp-sink":
        tcp_sink(args[0], int(args[1]))
    elif cmd == "tcp-send":
        tcp_send(args[0], int(args[1]), int(args[2]), float(args[3]))
    elif cmd == "udp-recv":
        udp_recv(args[0], int(args[1]), args[2], float(args[3]))
    elif cmd == "udp-send":
        udp_send(args[0], args[1], int(args[2]), int(args[3]))
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
