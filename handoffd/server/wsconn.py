"""What the hub (``/v1/ws``) shares with the parts it dispatches to (relay, bus): a connection, a protocol error, error frames.

Kept apart from ``hub`` so that ``relay`` and ``bus`` need none of the hub's
private names, the hub needs no import of ``relay`` (``RelayControl`` is the
surface it calls) and ``bus`` none of ``hub`` (``LocalHub`` is the surface it
calls).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web


class FrameError(Exception):
    """The peer sent a frame that breaks the protocol (answered with a fatal error)."""

    def __init__(self, message: str, code: str = "frame-malformed") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class RemoteDevice:
    """A device of ``account_id`` whose socket another instance holds (bus)."""

    device_id: str
    account_id: str


@dataclass(eq=False)
class Conn:
    """One online device's WebSocket on this instance (sends are serialised by ``lock``)."""

    device_id: str
    account_id: str
    ws: web.WebSocketResponse
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def error_frame(
    code: str, message: str, *, ref: object = None, fatal: bool = False
) -> dict[str, Any]:
    """An ``error`` message (with the request's ``ref``; ``fatal`` before a close)."""
    msg: dict[str, Any] = {"type": "error", "error": {"code": code, "message": message}}
    if ref is not None:
        msg["ref"] = ref
    if fatal:
        msg["fatal"] = True
    return msg


class RelayControl(Protocol):
    """The relay as the hub (and ``relaybus``) call it (``handoffd.server.relay.RelayHub``)."""

    async def on_hub_message(
        self, conn: Conn, kind: str, data: dict[str, Any], ref: object
    ) -> None: ...

    async def disconnect_devices(self, device_ids: Iterable[str], reason: str) -> None: ...

    def devices(self) -> set[str]: ...

    def holds(self, session_id: str) -> bool: ...

    async def close_for(self, account_id: str, device_id: str, session_id: str) -> None: ...

    async def close_all(self) -> None: ...


class LocalHub(Protocol):
    """The hub as the bus calls it: this instance's connections (``handoffd.server.hub.Hub``)."""

    relay: RelayControl | None

    def local_online(self, account_id: str) -> frozenset[str]: ...

    def local_connections(self) -> list[Conn]: ...

    def connection(self, device_id: str) -> Conn | None: ...

    async def push_presence(self, account_id: str) -> None: ...

    async def deliver(self, account_id: str, to: str, message: dict[str, Any]) -> None: ...

    async def moved_elsewhere(self, device_id: str) -> None: ...

    async def disconnect_revoked(
        self, device_ids: Iterable[str], *, local_only: bool = False
    ) -> None: ...
