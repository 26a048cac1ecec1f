"""Relay test helpers: a real server process with relay limits from the environment, paired devices."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from handoffd import identity
from handoffd.errors import HandoffError, TransportError
from handoffd.serverclient import JoinResult, RelayTicket, ServerClient, ServerLink
from handoffd.transport.base import Channel, LocalIdentity
from handoffd.transport.relay import RelayChannel, RelayDialer, RelayListener, RelayOptions
from tests.server.helpers import cli_invite, create_account, pair
from tests.support.processes import ServerProcess


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for a child process started inside the block."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start_server(base: Path, relay_env: dict[str, str] | None = None) -> ServerProcess:
    """A handoff-server over HTTPS on 127.0.0.1 with ``HANDOFF_RELAY_*`` settings."""
    env = {f"HANDOFF_RELAY_{k.upper()}": v for k, v in (relay_env or {}).items()}
    with environment(env):
        return ServerProcess(
            base / "data",
            extra=("--join-failures-per-minute", "1000", "--invites-per-minute", "1000"),
        ).start()


@dataclass(frozen=True)
class Paired:
    """A device paired with the server: its key and join result."""

    key: Ed25519PrivateKey
    result: JoinResult

    @property
    def id(self) -> str:
        return self.result.device_id


def pair_devices(server: ServerProcess, account: str, count: int) -> list[Paired]:
    """Create ``account`` and pair ``count`` devices to it (each with its own invite)."""
    create_account(server.data, account)
    urls = [cli_invite(server.data, account)[0] for _ in range(count)]

    async def go() -> list[Paired]:
        out = []
        for i, url in enumerate(urls):
            key, result, client = await pair(server, url, name=f"{account}-{i}")
            await client.close()
            out.append(Paired(key, result))
        return out

    return asyncio.run(go())


@dataclass
class Node:
    """One online device: server client, WebSocket link, relay listener and dialer."""

    server: ServerProcess
    paired: Paired
    options: RelayOptions = field(default_factory=RelayOptions)
    accept: bool = True

    def __post_init__(self) -> None:
        result = self.paired.result
        self.trust = identity.TrustAnchor.from_ca(result.account_ca, result.crl)
        self.local = LocalIdentity(
            key=self.paired.key,
            cert_der=identity.cert_to_der(result.device_cert),
            trust=lambda: self.trust,
        )
        self.client: ServerClient = self.server.client(self.paired.key, result)
        self.channels: asyncio.Queue[RelayChannel] = asyncio.Queue()
        self.errors: list[tuple[RelayTicket, HandoffError]] = []
        self.offers: list[RelayTicket] = []
        self.offered = asyncio.Event()
        self.presence = asyncio.Event()
        self.failed = asyncio.Event()
        self.listener = RelayListener(
            self.local,
            self.client,
            self._on_channel,
            on_error=self._on_error,
            options=self.options,
        )
        self.link: ServerLink = self.client.connect(
            lambda online: self.presence.set(), lambda sender, data: None, on_relay=self._on_relay
        )
        self._accepted: list[Channel] = []

    @property
    def id(self) -> str:
        return self.paired.id

    def _on_relay(self, ticket: RelayTicket) -> None:
        self.offers.append(ticket)
        self.offered.set()
        if self.accept:
            self.listener.on_relay(ticket)

    async def _on_channel(self, channel: RelayChannel) -> None:
        self._accepted.append(channel)
        await self.channels.put(channel)

    def _on_error(self, ticket: RelayTicket, exc: HandoffError) -> None:
        self.errors.append((ticket, exc))
        self.failed.set()

    def dialer(self, options: RelayOptions | None = None) -> RelayDialer:
        return RelayDialer(self.local, self.client, self.link, options or self.options)

    async def wait_online(self, *peers: str) -> None:
        async with asyncio.timeout(15):
            while not all(p in self.link.online for p in peers):
                self.presence.clear()
                await self.presence.wait()

    async def wait_offer(self) -> RelayTicket:
        """The first relay offer this device got (10 s)."""
        async with asyncio.timeout(10):
            await self.offered.wait()
        return self.offers[0]

    async def __aenter__(self) -> Node:
        await self.link.start()
        async with asyncio.timeout(15):
            await self.link.wait_connected()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.listener.close()
        for channel in self._accepted:
            await channel.close()
        await self.link.close()
        await self.client.close()


def pattern(size: int, seed: bytes) -> bytes:
    """``size`` deterministic pseudo-random bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


async def send_all(channel: Channel, data: bytes, chunk: int = 64 * 1024) -> None:
    """Send ``data`` in messages of ``chunk`` bytes, then an empty message as the end."""
    for i in range(0, len(data), chunk):
        await channel.send(data[i : i + chunk])
    await channel.send(b"")


async def drain(channel: Channel) -> tuple[list[bytes], TransportError]:
    """Every message until the channel ends, and the error that ended it (20 s)."""
    got: list[bytes] = []
    async with asyncio.timeout(20):
        while True:
            try:
                got.append(await channel.recv())
            except TransportError as exc:
                return got, exc


async def recv_all(channel: Channel) -> bytes:
    """Receive messages up to the empty one; their concatenation."""
    out = bytearray()
    while msg := await channel.recv():
        out += msg
    return bytes(out)


async def wait_stats(client: ServerClient, **want: int) -> dict[str, int]:
    """Poll ``/v1/relays`` until the counters named in ``want`` match (10 s)."""
    stats: dict[str, int] = {}
    async with asyncio.timeout(10):
        while True:
            stats = await client.relays()
            if all(stats[k] == v for k, v in want.items()):
                return stats
            await asyncio.sleep(0.05)
