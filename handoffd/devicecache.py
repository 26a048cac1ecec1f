"""The local cache of the account's devices, refreshed from the server's list."""

from __future__ import annotations

from collections.abc import Iterable

from handoffd.serverlink import DeviceRecord as ServerDevice
from handoffd.store import DeviceRecord as CachedDevice


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
