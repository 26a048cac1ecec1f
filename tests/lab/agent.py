"""Tiny network agent run inside lab hosts: TCP sink/send, UDP (unicast or multicast) send/receive.

``python agent.py CMD ARGS``; used by the lab's self-tests and free for any lab test.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import sys
import time

SO_RCVBUFFORCE = 33  # Linux; not exported by the socket module


def tcp_sink(addr: str, port: int) -> None:
    """Accept connections; for each, read to EOF and answer with the byte count."""
    srv = socket.create_server((addr, port))
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        with conn:
            total = 0
            while chunk := conn.recv(1 << 16):
                total += len(chunk)
            conn.sendall(str(total).encode())


def tcp_send(addr: str, port: int, nbytes: int, timeout: float) -> None:
    """Connect, send ``nbytes``, half-close; print the count the sink saw and the seconds taken."""
    start = time.monotonic()
    with socket.create_connection((addr, port), timeout=timeout) as s:
        block = b"x" * (1 << 16)
        left = nbytes
        while left > 0:
            left -= s.send(block[: min(left, len(block))])
        s.shutdown(socket.SHUT_WR)
        answer = s.recv(64).decode()
    print(f"{answer} {time.monotonic() - start:.4f}", flush=True)


def udp_recv(addr: str, port: int, group: str, seconds: float) -> None:
    """Count datagrams (joining ``group`` unless it is '-') until stdin closes or ``seconds`` pass."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    except PermissionError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    if group == "-":
        s.bind((addr, port))
    else:
        s.bind((group, port))
        mreq = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(addr))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    s.settimeout(0.0)
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_READ)
    sel.register(sys.stdin, selectors.EVENT_READ)
    print("ready", flush=True)
    count = 0
    deadline = time.monotonic() + seconds
    done = False
    while not done and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.1):
            if key.fileobj is s:
                with contextlib.suppress(BlockingIOError):
                    while True:
                        s.recv(2048)
                        count += 1
            elif not sys.stdin.readline():
                done = True
    with contextlib.suppress(BlockingIOError):
        while True:  # drain what already arrived
            s.recv(2048)
            count += 1
    print(count, flush=True)


def udp_send(src: str, dst: str, port: int, count: int) -> None:
    """Send ``count`` small datagrams from ``src`` to ``dst`` (unicast or a group), paced."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(src))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    for i in range(count):
        with contextlib.suppress(PermissionError):  # an nft drop on output
            s.sendto(f"{i}".encode(), (dst, port))
        if i % 50 == 49:
            time.sleep(0.002)
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
