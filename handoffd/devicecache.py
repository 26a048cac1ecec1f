"""The local cache of the account's devices, refreshed from the server's list."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from handoffd.serverlink import DeviceRecord as ServerDevice
from handoffd.store import DeviceRecord as CachedDevice
from handoffd.store import Store


def cache_records(records: Iterable[ServerDevice], now: float) -> list[CachedDevice]:
    """The server's device list as rows of the local device cache, stamped ``now``."""
    return [
        CachedDevice(
            device_id=r.device_id,
            name=r.name,
            platform=r.platform,
            revoked=r.revoked,
            online=r.online,
            last_seen=r.last_seen,
            created_at=r.created_at,
            updated_at=now,
        )
        for r in records
    ]


async def store_device_list(
    store: Store,
    records: Sequence[ServerDevice],
    *,
    me: str,
    now: float,
    publish: Callable[[dict[str, Any]], object],
) -> None:
    """Make the cache the server's list; a ``device.joined`` event for each unrevoked device
    the cache did not hold (a device paired into the account since the last list)."""
    new = await store.run(store.replace_devices, cache_records(records, now))
    for r in records:
        if r.device_id in new and r.device_id != me and not r.revoked:
            publish(
                {
                    "type": "device.joined",
                    "device_id": r.device_id,
                    "name": r.name,
                    "platform": r.platform,
                }
            )
