"""The server's store: accounts (CA, password), devices, certificates, CRLs, invites.

Synchronous and thread-safe (call it from a worker thread in async code, e.g.
``await asyncio.to_thread(store.join, ...)``). The database is a back-end
(``handoffd.server.storebackend``): SQLite in the data directory by default (WAL, so
the CLI can write while the server runs), or PostgreSQL for several instances.
Every multi-row change is one serialised write transaction (SQLite's ``BEGIN
IMMEDIATE``): a failed operation leaves nothing behind. The schema is
``storeschema.MIGRATIONS``.

``Store`` is composed of parts, one job each: ``storecore`` (back-end, clock,
meta), ``storeaccounts`` (accounts, login), ``storedevices`` (devices,
certificates, CRLs), ``storeinvites`` (invites, join). What it holds is in
``storemodel``.

Refusals are ``ServerError`` with the HTTP ``status`` the API answers with and
a stable ``code``. The clock is injectable (``clock``, Unix seconds) for tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from handoffd.server import storedb
from handoffd.server.storeaccounts import AccountStore
from handoffd.server.storedb import DB_FILE as DB_FILE
from handoffd.server.storeinvites import InviteStore
from handoffd.server.storemodel import MAX_ACCOUNT_NAME as MAX_ACCOUNT_NAME
from handoffd.server.storemodel import MAX_DEVICE_NAME as MAX_DEVICE_NAME
from handoffd.server.storemodel import Account as Account
from handoffd.server.storemodel import Device as Device
from handoffd.server.storemodel import Issued as Issued
from handoffd.server.storemodel import NewInvite as NewInvite
from handoffd.server.storemodel import check_account_name as check_account_name
from handoffd.server.storemodel import check_device_name as check_device_name
from handoffd.server.storemodel import check_platform as check_platform
from handoffd.server.storeschema import MIGRATIONS as MIGRATIONS
from handoffd.server.storeschema import SCHEMA_VERSION as SCHEMA_VERSION


class Store(AccountStore, InviteStore):
    """The server's database (see the module docstring)."""

    @classmethod
    def open(
        cls, data_dir: Path, *, clock: Callable[[], float] = time.time, database: str | None = None
    ) -> Store:
        """Open and migrate ``data_dir/server.db``, or PostgreSQL at ``database`` (see storedb)."""
        backend = storedb.open_backend(data_dir, database)
        try:
            backend.migrate(MIGRATIONS)
        except BaseException:
            backend.close()
            raise
        return cls(backend, clock)
