"""Shared pytest configuration: the hygiene fixtures, lab timeouts, and skips as CI failures.

Outside the lab every test (python-zeroconf's rules):
- fails if handoffd's code blocks a running event loop (blockbuster: a blocking call with
  handoffd on the stack while a loop runs in that thread; as python-zeroconf scans only
  zeroconf, test code preparing files in an async test is not scanned);
- fails if it leaves threads alive or asyncio tasks pending when its loop closes;
- has a default timeout of 60 s (pyproject.toml); a test that needs more says so with its own
  ``pytest.mark.timeout`` and a comment giving the reason. Lab tests get 300 s unless marked.
"""

from __future__ import annotations

import asyncio
import asyncio.runners
import os
import threading
import time
from collections.abc import Iterator

import pytest
from blockbuster import BlockBuster, blockbuster_ctx

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


# ---------------------------------------------------------------- blocking the event loop


def _allow_known_blocking(bb: BlockBuster) -> None:
    """Blocking calls still made on the loop by code being rebuilt (issue #10, `rebuild`).

    Each entry names the file and function; the rebuild moves the call to a thread or makes it
    non-blocking, then deletes the entry.
    """
    # bench/fuzz_server.py (`fuzzfix`): the harness opens, seeds, reads and closes the server's
    # Store (sqlite3, os.mkdir) on the event loop in Target.__init__, check_b1, _online and
    # close; harness code beside the server, not its request path.
    for name in bb.functions:
        bb.functions[name].can_block_in(
            "bench/fuzz_server.py", {"__init__", "check_b1", "_online", "close"}
        )


@pytest.fixture(autouse=True)
def no_blocking(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a non-lab test in which handoffd's code blocks a running event loop."""
    if request.node.get_closest_marker("lab"):
        yield
        return
    with blockbuster_ctx(["handoffd"]) as bb:
        _allow_known_blocking(bb)
        yield


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
    """Fail a non-lab test that leaves tasks pending at loop close, or new threads alive."""
    if request.node.get_closest_marker("lab"):
        yield
        return
    threads_before = set(threading.enumerate())
    _pending_at_close.clear()
    yield
    tasks = [repr(t) for t in _pending_at_close]
    _pending_at_close.clear()
    deadline = time.monotonic() + THREAD_GRACE
    new = [t for t in threading.enumerate() if t not in threads_before]
    for t in new:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    alive = [repr(t) for t in new if t.is_alive()]
    if tasks or alive:
        pytest.fail(f"left behind: tasks pending at loop close {tasks}; threads alive {alive}")
