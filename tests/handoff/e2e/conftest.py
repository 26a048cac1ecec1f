"""The lab end-to-end suite's world: one per test module."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.handoff.e2e.world import (
    DOCS,
    NO_LANE,
    World,
)
from tests.handoff.helpers import (
    register_notes_app,
    wait_nearby,
    write_random,
)
from tests.handoff.labkit import (
    SIGNALING_PORT,
    LabDaemon,
    LabServer,
    pair_daemon,
)
from tests.lab import Lab
from tests.lab.fixtures import require_lab
from tests.server.helpers import create_account


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    """One lab for the module (three hosts): setting it up takes most of ten seconds.

    Module-scoped, so it cannot use the function-scoped ``lab`` fixture; it does what that
    fixture does: skips where the lab cannot run, and closes the lab (every process in it
    stopped by PID, every namespace removed) whatever happens.
    """
    require_lab()
    lab = Lab.create(3)
    root = Path(tempfile.mkdtemp(prefix="hl", dir="/tmp"))
    try:
        h0, h1, _ = lab.hosts
        server = LabServer(root / "srv", host=h0).start()
        account_id = create_account(server.data, "lab")
        a = LabDaemon(root / "a", env=dict(NO_LANE), host=h0)
        b = LabDaemon(
            root / "b", env={**NO_LANE, "HANDOFF_SIGNALING_PORT": str(SIGNALING_PORT)}, host=h1
        )
        for d in (a, b):
            d.home.mkdir(mode=0o700)
            d.start()
        a_id = pair_daemon(server, a, "lab", "laptop")
        b_id = pair_daemon(server, b, "lab", "desk")
        wait_nearby(a, b_id)  # over real multicast on the lab bridge
        wait_nearby(b, a_id)
        register_notes_app(b)
        docs_dir = root / "docs"
        docs_dir.mkdir()
        docs = {name: (docs_dir / name, write_random(docs_dir / name, size)) for name, size in DOCS.items()}  # fmt: skip
        yield World(lab, root, server, account_id, a, b, a_id, b_id, docs)
    finally:
        lab.close()
        if not os.environ.get("HANDOFF_TEST_KEEP"):  # set it to read the daemons' logs
            shutil.rmtree(root, ignore_errors=True)
