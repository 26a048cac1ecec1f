"""Owned background tasks: a set that spawns, keeps and discards them, and a supervisor that
restarts a crashed loop with backoff (its traceback logged), so no task is ever silently gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from handoffd import backoff
from handoffd.errors import HandoffError

logger = logging.getLogger("handoffd.tasks")


class TaskSet:
    """Spawned tasks kept until done; ``close()`` cancels and awaits every one. Bound to a
    TaskGroup, they run in it (cancelled with it). A task that fails is logged with its
    traceback; it does not take its siblings down (a long-lived loop is ``supervise``d)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()
        self._group: asyncio.TaskGroup | None = None
        self._closed = False

    def bind(self, group: asyncio.TaskGroup | None) -> None:
        """Spawn into ``group`` from now on (None: unbind)."""
        self._group = group

    def spawn(
        self, coro: Coroutine[Any, Any, object], name: str, *, contain: bool = True
    ) -> asyncio.Task[None]:
        """Start ``coro`` as a task owned here; HandoffError(engine-stopped) once closed.
        ``contain=False`` (bound only): its failure fails the group, as a vital task's must."""
        if self._closed:
            coro.close()
            raise HandoffError(f"{self.name} is stopped", code="engine-stopped")
        if self._group is not None and not contain:
            task = self._group.create_task(_plain(coro), name=name)
        elif self._group is not None:
            task = self._group.create_task(_contained(coro, name), name=name)
        else:
            task = asyncio.get_running_loop().create_task(_contained(coro, name), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # Cancelled before it started, the wrapper never awaited ``coro``: close it (no warning).
        task.add_done_callback(lambda t: coro.close() if t.cancelled() else None)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def closed(self) -> bool:
        """True once ``close()`` began: ``spawn`` refuses."""
        return self._closed

    async def close(self) -> None:
        """Cancel every task and wait for them (idempotent; no new task after this)."""
        self._closed = True
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


async def _plain(coro: Coroutine[Any, Any, object]) -> None:
    await coro


async def _contained(coro: Coroutine[Any, Any, object], name: str) -> None:
    """Run ``coro``; a failure is logged with its traceback (cancellation goes through)."""
    try:
        await coro
    except Exception:
        logger.exception("task failed task=%s", name)


async def supervise(
    loop: Callable[[], Awaitable[None]],
    name: str,
    *,
    base: float = 1.0,
    cap: float = 60.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Run ``loop`` until it returns: when it crashes, log the traceback and run it again after
    a backoff that grows with consecutive crashes. Cancellation goes through untouched."""
    crashes = 0
    while True:
        try:
            await loop()
        except Exception:
            crashes += 1
            logger.exception("loop crashed; restarting loop=%s crashes=%d", name, crashes)
        else:
            return  # a clean end (its input closed)
        await sleep(backoff.delay(crashes, base=base, cap=cap))
