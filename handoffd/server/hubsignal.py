"""The hub's ``signal`` forwarding: checked, then passed to another online device of the same account."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from handoffd.server.wsconn import Conn, FrameError, RemoteDevice, error_frame
from handoffd.wire import auth

if TYPE_CHECKING:
    from handoffd.server.bus import RedisBus

MAX_SIGNAL = 256 * 1024


class SignalHub(Protocol):
    """What forwarding needs of the hub (``handoffd.server.hub.Hub``)."""

    bus: RedisBus | None

    def connection(self, device_id: str) -> Conn | None: ...

    async def send(self, conn: Conn | RemoteDevice, message: dict[str, Any]) -> bool: ...


async def forward_signal(hub: SignalHub, conn: Conn, data: dict[str, Any], ref: object) -> None:
    """Forward ``conn``'s signal (same account only; else ``target-unavailable``)."""
    to, payload = data.get("to"), data.get("data")
    if not isinstance(to, str) or not isinstance(payload, str):
        raise FrameError("signal needs to and data")
    try:
        auth.b64d(payload, max_len=MAX_SIGNAL)
    except ValueError:
        raise FrameError("signal data must be base64 of at most 256 KiB") from None
    target = hub.connection(to)
    if (
        target is None
        and hub.bus is not None  # bus: the target may be held by another instance
        and to != conn.device_id
        and await hub.bus.forward_signal(conn.account_id, conn.device_id, to, payload)
    ):
        return
    if target is None or target.account_id != conn.account_id or to == conn.device_id:
        await hub.send(
            conn,
            error_frame("target-unavailable", "that device is not online in this account", ref=ref),
        )
        return
    delivered = await hub.send(target, {"type": "signal", "from": conn.device_id, "data": payload})
    if not delivered:
        await hub.send(
            conn,
            error_frame("target-unavailable", "that device is not online in this account", ref=ref),
        )
