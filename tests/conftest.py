"""Shared pytest configuration: the hygiene fixtures, lab timeouts, and skips as CI failures.

Outside the lab every test (python-zeroconf's rules):
- fails if handoffd's code blocks a running event loop (blockbuster: a blocking call made by
  handoffd while a loop runs in that thread; as python-zeroconf scans only zeroconf, test and
  bench code is not judged, even when handoffd calls it back);
- fails if it leaves threads alive or asyncio tasks pending when its loop closes;
- has a default timeout of 60 s (pyproject.toml); a test that needs more says so with its own
  ``pytest.mark.timeout`` and a comment giving the reason. Lab tests get 300 s unless marked.
"""

from __future__ import annotations

import asyncio
import asyncio.runners
import gc
import inspect
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from blockbuster import BlockBuster

from tests.services import PostgresServer

pytest_plugins = ["tests.lab.fixtures"]

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
LAB_TIMEOUT = 300
THREAD_GRACE = 10.0
"""How long a test's new threads may take to finish after it (an executor's workers exit
when its loop closes, a moment later)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Lab tests without their own timeout mark keep the lab's larger default."""
    for item in items:
        if item.get_closest_marker("lab") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(LAB_TIMEOUT))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Turn any skip into a failing exit status when running in CI."""
    if not IN_CI:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    skipped = reporter.stats.get("skipped", [])
    if skipped and exitstatus == 0:
        reporter.write_line(f"CI=true: {len(skipped)} test(s) skipped; skips are failures in CI")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL cluster for the session (tests make their own databases in it)."""
    server = PostgresServer().init()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> str | None:
    """Each store back-end in turn: None (SQLite) or a fresh PostgreSQL database's URL."""
    if request.param == "sqlite":
        return None
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()


# ---------------------------------------------------------------- blocking the event loop

ROOT = Path(__file__).resolve().parents[1]
_PRODUCT = str(ROOT / "handoffd") + os.sep
_HARNESS = (str(ROOT / "tests") + os.sep, str(ROOT / "bench") + os.sep)


def _harness_blocks() -> bool:
    """True if test or bench code made the blocking call; only handoffd's calls are judged.

    The caller on the loop is the nearest coroutine of ours on the stack (a plain function
    cannot know it runs on the loop; the coroutine that called it can): a test calling a
    blocking helper of handoffd's is the test's doing, handoffd's coroutine calling it (or a
    test's callback) is handoffd's. With no coroutine of ours, the nearest frame of ours decides.
    """
    nearest: bool | None = None
    frame = inspect.currentframe()
    while frame is not None:
        name = frame.f_code.co_filename
        if name != __file__ and name.startswith((_PRODUCT, *_HARNESS)):
            harness = name.startswith(_HARNESS)
            if frame.f_code.co_flags & (inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR):
                return harness
            if nearest is None:
                nearest = harness
        frame = frame.f_back
    return bool(nearest)


def _allow_known_blocking(bb: BlockBuster) -> None:
    """Blocking calls still made on the loop by code being rebuilt (issue #10, `rebuild`).

    Each entry names the file and function; the rebuild moves the call to a thread or makes it
    non-blocking, then deletes the entry.
    """


@pytest.fixture(autouse=True)
def no_blocking(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a non-lab test in which handoffd's code blocks a running event loop."""
    if request.node.get_closest_marker("lab"):
        yield
        return
    bb = BlockBuster(["handoffd"])
    for function in bb.functions.values():
        own = function.can_block_predicate
        function.can_block_predicate = lambda *args, _own=own, **kwargs: (
            _own(*args, **kwargs) or _harness_blocks()
        )
    _allow_known_blocking(bb)
    bb.activate()
    try:
        yield
    finally:
        bb.deactivate()


# ---------------------------------------------------------------- leaked tasks and threads

_pending_at_close: list[asyncio.Task[object]] = []
_cancel_all_tasks = asyncio.runners._cancel_all_tasks  # type: ignore[attr-defined]


def _note_pending_then_cancel(loop: asyncio.AbstractEventLoop) -> None:
    """asyncio.run and asyncio.Runner (pytest-asyncio) cancel what is left: note it first."""
    _pending_at_close.extend(t for t in asyncio.all_tasks(loop) if not t.done())
    _cancel_all_tasks(loop)


asyncio.runners._cancel_all_tasks = _note_pending_then_cancel  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a non-lab test that leaves tasks pending at loop close, or new threads alive.

    Every test ends with a garbage collection, so that a transport or socket it left open
    warns (and fails, ``filterwarnings = error``) in that test, not in a later one."""
    if request.node.get_closest_marker("lab"):
        yield
        gc.collect()
        return
    threads_before = set(threading.enumerate())
    _pending_at_close.clear()
    yield
    gc.collect()
    tasks = [repr(t) for t in _pending_at_close]
    _pending_at_close.clear()
    deadline = time.monotonic() + THREAD_GRACE
    new = [t for t in threading.enumerate() if t not in threads_before]
    for t in new:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    alive = [repr(t) for t in new if t.is_alive()]
    if tasks or alive:
        pytest.fail(f"left behind: tasks pending at loop close {tasks}; threads alive {alive}")
