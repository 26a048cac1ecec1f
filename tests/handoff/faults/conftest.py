"""Fixtures of the lab fault suite: one world per test module, healthy before and after
each case; the tmpfs-backed devices."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.handoff.faults.world import (
    DEVICES,
    NO_LANE,
    TMPFS_SIZE,
    Pocket,
    Stick,
    World,
    extra_daemon,
    recover,
)
from tests.handoff.helpers import wait_nearby
from tests.handoff.labkit import (
    LabDaemon,
    LabServer,
    MiB,
    pair_daemon,
    tmpfs,
)
from tests.lab import Lab
from tests.lab.fixtures import require_lab
from tests.server.helpers import create_account


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    """One lab, one server and three paired daemons for the module.

    Module-scoped, so it cannot use the function-scoped ``lab`` fixture; it does what that
    fixture does: skips where the lab cannot run, and closes the lab (every process in it
    stopped by PID, every namespace removed) whatever happens.
    """
    require_lab()
    lab = Lab.create(6, subnets=2, layout=[0, 0, 0, 0, 0, 1], udp_routed=False)
    root = Path(tempfile.mkdtemp(prefix="hf", dir="/tmp"))
    try:
        (root / "tap").mkdir()
        tap = {"HANDOFF_RELAY_TAP_DIR": str(root / "tap")}
        server = LabServer(root / "srv", host=lab.hosts[0], env=tap).start()
        account_id = create_account(server.data, "lab")
        daemons = {
            name: LabDaemon(root / name, env=dict(NO_LANE), host=host)
            for name, host in zip(DEVICES, lab.hosts[1:4], strict=True)
        }
        for d in daemons.values():
            d.home.mkdir(mode=0o700)
            d.start()
        ids = {name: pair_daemon(server, d, "lab", name) for name, d in daemons.items()}
        for name, d in daemons.items():
            for other in DEVICES:
                if other != name:
                    wait_nearby(d, ids[other])  # over real multicast on the lab bridge
        yield World(lab, root, server, account_id, daemons, ids)
    finally:
        lab.close()
        if not os.environ.get("HANDOFF_TEST_KEEP"):  # set it to read the daemons' logs
            shutil.rmtree(root, ignore_errors=True)


@pytest_asyncio.fixture(autouse=True)
async def recovered(world: World) -> AsyncIterator[None]:
    """Each case starts from a healthy world and leaves one behind, pass or fail."""
    await recover(world)
    try:
        yield
    finally:
        await recover(world)


@pytest.fixture
def pocket(world: World) -> Iterator[Pocket]:
    """Start "pocket" in h4 with ``inbox/`` and ``partial/`` on a 320 MiB tmpfs (symlinks
    into it: one filesystem for both, so the commit's renames stay atomic); stopped and
    unmounted afterwards, also on failure."""
    with tmpfs(world.root / "pocket-disk", f"{TMPFS_SIZE // MiB}m") as disk:

        def prepare(home: Path) -> None:
            for sub in ("inbox", "partial"):
                (disk / sub).mkdir(mode=0o700)
                (home / sub).symlink_to(disk / sub)

        with extra_daemon(world, "pocket", world.lab.hosts[4], prepare=prepare) as device_id:
            wait_nearby(world.daemons["laptop"], device_id)
            yield Pocket(world.extras["pocket"], device_id, disk)


@pytest.fixture
def stick(world: World) -> Iterator[Stick]:
    """Start "stick" in h4 with its home a 320 MiB tmpfs (the receiver keeps ``DISK_MARGIN``,
    256 MiB, free: a smaller disk would decline every handoff at once); stopped and unmounted
    afterwards, also on failure."""
    with (
        tmpfs(world.root / "stick", f"{TMPFS_SIZE // MiB}m") as disk,
        extra_daemon(world, "stick", world.lab.hosts[4]) as device_id,
    ):
        wait_nearby(world.daemons["laptop"], device_id)
        yield Stick(world.extras["stick"], device_id, disk)
