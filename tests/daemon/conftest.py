"""Fixtures of the daemon tests: short homes (AF_UNIX paths are short), daemons, a server."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.processes import DaemonProcess, ServerProcess


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A fresh directory with a short path under /tmp, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="hd", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemons(short_dir: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """A factory of daemon processes (not started); every one is stopped afterwards."""
    made: list[DaemonProcess] = []

    def make(name: str = "a", env: dict[str, str] | None = None) -> DaemonProcess:
        home = short_dir / name
        home.mkdir(mode=0o700, exist_ok=True)
        d = DaemonProcess(home, env=env or {})
        made.append(d)
        return d

    try:
        yield make
    finally:
        for d in made:
            d.kill()


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """A real handoff-server (HTTPS, self-signed, pinned) for this module."""
    data = Path(tempfile.mkdtemp(prefix="hds", dir="/tmp"))
    proc = ServerProcess(data / "data").start()
    try:
        yield proc
    finally:
        proc.stop()
        shutil.rmtree(data, ignore_errors=True)
