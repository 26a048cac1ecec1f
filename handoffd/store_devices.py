"""The store's cache of the account's devices."""

from __future__ import annotations

import time
from collections.abc import Sequence

from handoffd.store_base import StoreBase
from handoffd.store_records import (
    DeviceRecord,
)


class DeviceTables(StoreBase):
    """The server's device list as last seen."""

    def replace_devices(self, devices: Sequence[DeviceRecord]) -> frozenset[str]:
        """Make the cache exactly ``devices`` (the server's current list); the ids it did not
        hold before (none when it was empty: the first list after pairing is not news)."""
        with self.transaction() as db:
            before = {row[0] for row in db.execute("SELECT device_id FROM devices")}
            db.execute("DELETE FROM devices")
            db.executemany(
                "INSERT INTO devices (device_id, name, platform, revoked, online, last_seen,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        d.device_id,
                        d.name,
                        d.platform,
                        int(d.revoked),
                        None if d.online is None else int(d.online),
                        d.last_seen,
                        d.created_at,
                        d.updated_at,
                    )
                    for d in devices
                ],
            )
        if not before:
            return frozenset()
        return frozenset(d.device_id for d in devices) - before

    def mark_device_revoked(self, device_id: str) -> None:
        """Record that ``device_id`` is revoked."""
        self._db.execute(
            "UPDATE devices SET revoked = 1, online = 0, updated_at = ? WHERE device_id = ?",
            (time.time(), device_id),
        )

    def list_devices(self) -> list[DeviceRecord]:
        """The cached devices of the account."""
        rows = self._db.execute(
            "SELECT device_id, name, platform, revoked, online, last_seen, created_at, updated_at"
            " FROM devices ORDER BY name, device_id"
        )
        return [
            DeviceRecord(
                device_id=r[0],
                name=r[1],
                platform=r[2],
                revoked=bool(r[3]),
                online=None if r[4] is None else bool(r[4]),
                last_seen=r[5],
                created_at=r[6],
                updated_at=r[7],
            )
            for r in rows
        ]
