"""A LAN neighbour floods a real daemon's signaling port: real offers from the paired device are
still answered over the LAN (not ``busy``), and the daemon's control socket keeps answering."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import resource
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from handoffd.control.client import Item
from handoffd.transport.signaling import client_context
from tests.handoff.helpers import Pair, paired_daemons, wait_state

# More than the default 60 s: a server, two daemons, pairing, and a flood running through handoffs.
pytestmark = pytest.mark.timeout(300)

DAEMON_NOFILE = 1024  # a common default soft limit; the daemons inherit it from this process
HALF_OPEN = 1100  # unfinished handshakes (before: ~1,100 exhausted the daemon's descriptors)
IDLE_TLS = 60  # idle TLS connections (before: 32 handler slots, so offers got "busy")


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (DAEMON_NOFILE, before[1]))
    try:
        cm = paired_daemons()
        p = cm.__enter__()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)  # the flood needs more than 1,024
    try:
        yield p
    finally:
        cm.__exit__(None, None, None)


def _signaling_port(log: Path) -> int:
    ports = re.findall(
        r'signaling listener started" signaling_port=(\d+)', log.read_text(errors="replace")
    )
    assert ports, "the daemon logged no signaling port"
    return int(ports[-1])


class Flood:
    """A neighbour at 127.0.0.2 holding idle TLS connections, one at 127.0.0.3 holding TCP
    connections that never start TLS; each reconnects as soon as the daemon drops it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.tasks: list[asyncio.Task[None]] = []
        self.connects = 0

    def start(self) -> None:
        self.tasks += [asyncio.create_task(self._idle_tls()) for _ in range(IDLE_TLS)]
        self.tasks += [asyncio.create_task(self._half_open()) for _ in range(HALF_OPEN)]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _idle_tls(self) -> None:
        while True:
            writer = None
            try:
                async with asyncio.timeout(30):
                    reader, writer = await asyncio.open_connection(
                        "127.0.0.1",
                        self.port,
                        ssl=client_context(),
                        server_hostname="",
                        local_addr=("127.0.0.2", 0),
                    )
                self.connects += 1
                await reader.read()  # until the daemon drops it
            except (OSError, ssl.SSLError, TimeoutError):
                pass
            finally:
                if writer is not None:
                    writer.close()
            await asyncio.sleep(1.0)

    async def _half_open(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            s = socket.socket()
            try:
                s.settimeout(0.0)
                s.bind(("127.0.0.3", 0))
                async with asyncio.timeout(30):
                    await loop.sock_connect(s, ("127.0.0.1", self.port))
                    self.connects += 1
                    await loop.sock_recv(s, 1)  # until the daemon drops it
            except (OSError, TimeoutError):
                pass
            finally:
                s.close()
            await asyncio.sleep(1.0)


@pytest.mark.asyncio
async def test_a_flooded_signaling_port_still_answers_real_offers(pair: Pair) -> None:
    port = _signaling_port(pair.b.log)
    pair.server.stop()  # LAN only: the relay must not hide a starved listener
    flood = Flood(port)
    flood.start()
    try:
        async with asyncio.timeout(60):
            while flood.connects < HALF_OPEN:  # noqa: ASYNC110 - a counter, no event
                await asyncio.sleep(0.1)
        await asyncio.sleep(2)  # the flood in full swing
        status, body = await asyncio.to_thread(pair.b.curl, "GET", "/v1/status")
        assert status == 200, body
        data = os.urandom(4096)
        async with pair.client(pair.a) as a, pair.client(pair.b) as b:
            session = await a.publish(
                "org.example.flood", "flood", items=[Item.of_data("document", "d.bin", data)]
            )
            h = await a.send(session.id, "desk")
            done = await wait_state(a, h.id, {"delivered", "failed", "declined"}, within=150)
            assert done["state"] == "delivered", done
            entry = await b.inbox_entry(h.id)
            assert entry.items[0].sha256 == hashlib.sha256(data).hexdigest()
        status, body = await asyncio.to_thread(pair.b.curl, "GET", "/v1/status")
        assert status == 200, body
    finally:
        await flood.stop()
    log = pair.b.log.read_text(errors="replace")
    assert "too many from one address" in log  # the neighbours were refused at accept
    assert len(log.splitlines()) < 1000  # refusals are logged rate-limited
