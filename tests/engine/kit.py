"""Two handoff engines in one process, joined by in-memory channels (no daemons, no sockets):
real stores (SQLite), real staging on disk, real signed offers and certificates; only the
network is memory (``handoffd.transport.memory``), with a "direct" and a "relay" path."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from handoffd import identity
from handoffd.config import Settings, SettingsFile
from handoffd.devicestate import DeviceState, ServerPin
from handoffd.errors import HandoffError
from handoffd.events import EventBus
from handoffd.handoff.engine import Engine, EngineInputs
from handoffd.handoff.timings import SystemClock, Timings
from handoffd.items import Item
from handoffd.paths import Paths
from handoffd.peering import ServerPath
from handoffd.store import DeviceRecord, HandoffRecord, Store
from handoffd.transport.base import Channel, LocalIdentity
from handoffd.transport.connector import Connector
from handoffd.transport.memory import MemoryDialer, MemoryNetwork
from handoffd.transport.webrtc import Accepted, WebRtcOptions
from tests.transport.helpers import Account, utcnow

FAST = Timings(
    backoff_base=0.05,
    backoff_max=0.2,
    discovery_grace=0.0,
    resumed_wait=5.0,
    janitor_interval=0.2,
    head_start=0.05,
    upgrade_first=0.1,
    upgrade_every=0.1,
)


@dataclasses.dataclass
class Board:
    """What the control API would show (presence and refusals)."""

    nearby: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    server_online: frozenset[str] | None = None
    refusals: collections.deque[dict[str, Any]] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=32)
    )


class _NoSignaling:
    """Signaling stays off: peers meet over the memory network."""

    port: int | None = None

    async def start(self) -> bool:
        return False

    async def close(self) -> None:
        return None


def _no_signaling(*_: object) -> _NoSignaling:
    return _NoSignaling()


def _no_discovery(**_: object) -> Any:
    raise HandoffError("no discovery in memory", code="no-discovery")


def _no_server(**_: object) -> ServerPath:
    raise HandoffError("no server in memory", code="no-server")


async def _no_offers(
    *, local: LocalIdentity, offer_envelope: bytes, options: WebRtcOptions | None = None
) -> Accepted:
    raise HandoffError("no WebRTC in memory", code="no-webrtc")


class Node:
    """One device: its store, staging, settings and engine."""

    def __init__(
        self, root: Path, account: Account, network: MemoryNetwork, timings: Timings
    ) -> None:
        self.paths = Paths.resolve(root)
        self.paths.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        dev = account.device()
        self.id = identity.device_id_for(dev.key.public_key())
        self.store = Store.open(self.paths.state_db)
        self.device = DeviceState(
            self.paths, dev.key, dev.cert, account.trust, ServerPin("https://127.0.0.1:9", None)
        )
        self.settings = SettingsFile(
            self.paths.config_toml, Settings(lan_discovery=False, auto_accept=False)
        )
        self.events = EventBus()
        self.board = Board()
        self.peer = identity.PeerIdentity(
            device_id=self.id,
            account_id=account.trust.account_id,
            serial=dev.cert.serial_number,
            not_after=dev.cert.not_valid_after_utc,
            cert=dev.cert,
        )
        self.direct = MemoryDialer(network, self.peer, "direct")
        self.relay = MemoryDialer(network, self.peer, "relay")
        self.timings = timings
        self.engine = self._build()
        network.join(self.peer, self._accept)
        self.accepted: list[Channel] = []
        self.tg: asyncio.TaskGroup | None = None
        self._run: asyncio.Task[None] | None = None

    def _build(self) -> Engine:
        timings = self.timings
        return Engine(
            EngineInputs(
                store=self.store,
                device=self.device,
                settings=self.settings,
                events=self.events,
                paths=self.paths,
                board=self.board,
                timings=timings,
                clock=SystemClock(),
                environ=dict(os.environ),
                make_signaling=_no_signaling,
                make_discovery=_no_discovery,
                make_server_path=_no_server,
                accept_offer=_no_offers,
                connector=Connector([self.direct, self.relay], head_start=timings.head_start),
            )
        )

    async def start(self, tg: asyncio.TaskGroup) -> None:
        """Run the engine in ``tg`` until ready."""
        self._run = tg.create_task(self.engine.run(), name=f"engine-{self.id[:6]}")
        await asyncio.wait_for(self.engine.ready.wait(), 30)

    async def stop(self) -> None:
        """Stop the engine (as a daemon's stop does)."""
        if self._run is not None:
            self._run.cancel()
            await asyncio.wait([self._run])
            self._run = None

    async def restart(self, tg: asyncio.TaskGroup) -> None:
        """Stop the engine and start a new one on the same store and files."""
        await self.stop()
        self.engine = self._build()
        await self.start(tg)

    def _accept(self, channel: Channel) -> None:
        self.accepted.append(channel)
        self.engine.links.adopt(channel)

    def know(self, other: Node, name: str) -> None:
        """Put ``other`` in this device's cache of the account's devices."""
        now = utcnow().timestamp()
        row = DeviceRecord(
            other.id,
            name,
            "linux",
            revoked=False,
            online=True,
            last_seen=now,
            created_at=now,
            updated_at=now,
        )
        self.store.replace_devices([row])

    async def session(
        self,
        *items: Item,
        app_id: str = "org.example.notes",
        context: dict[str, Any] | None = None,
    ) -> str:
        """A new active session with ``items``; its id."""
        ctx = {"k": "v"} if context is None else context
        record = await self.store.run(self.store.create_session, app_id, "a note", ctx, list(items))
        return record.id

    async def wait_state(
        self, handoff_id: str, *states: str, within: float = 30.0
    ) -> HandoffRecord:
        """The record once it is in one of ``states`` (polls the store, bounded)."""
        async with asyncio.timeout(within):
            while True:
                record = await self.store.run(self.store.get_handoff, handoff_id)
                if record is not None and record.state in states:
                    return record
                await asyncio.sleep(0.02)

    async def close(self) -> None:
        self.events.close()
        await self.device.close()
        self.store.close()


def text_item(text: str, name: str = "note.txt") -> Item:
    """A text item."""
    data = text.encode()
    return Item("message", name, "text/plain", "text", len(data), text=text)


def data_item(data: bytes, name: str = "blob.bin") -> Item:
    """An inline data item."""
    return Item("document", name, "application/octet-stream", "data", len(data), data=data)


@contextlib.asynccontextmanager
async def pair(
    tmp_path: Path, timings: Timings = FAST, configure: Callable[[Node, Node], None] | None = None
) -> AsyncIterator[tuple[Node, Node]]:
    """Two devices of one account, engines running, each knowing the other."""
    account, network = Account(), MemoryNetwork()
    a = Node(tmp_path / "a", account, network, timings)
    b = Node(tmp_path / "b", account, network, timings)
    a.know(b, "bee")
    b.know(a, "ay")
    if configure is not None:
        configure(a, b)
    try:
        async with asyncio.TaskGroup() as tg:
            a.tg = b.tg = tg
            await a.start(tg)
            await b.start(tg)
            try:
                yield a, b
            finally:
                await a.stop()
                await b.stop()
    finally:
        await a.close()
        await b.close()


def events_of(node: Node, kinds: Mapping[str, object] | None = None) -> Any:
    """A subscription to ``node``'s events."""
    return node.events.subscribe()
