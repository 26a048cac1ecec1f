"""A tap of a lab host's link: every frame through its interface, appended raw to a file.

Run inside a lab host (the lab stops it by PID; SIGTERM ends it cleanly)::

    python -m tests.handoff.linktap --iface eth0 --out FILE

An AF_PACKET socket (root, inside the host's namespace only) sees frames both ways; the
file holds their bytes back to back, headers and all, so a test can search it for a marker.
It prints ``ready`` once the socket is bound.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from pathlib import Path

ETH_P_ALL = 0x0003


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="linktap")
    parser.add_argument("--iface", default="eth0")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    stop = False

    def on_term(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024 * 1024)
    sock.bind((args.iface, 0))
    sock.settimeout(0.2)
    print("ready", flush=True)
    with args.out.open("ab") as out:
        while not stop:
            try:
                frame = sock.recv(65536)
            except TimeoutError:
                continue
            except InterruptedError:
                continue
            out.write(frame)
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
