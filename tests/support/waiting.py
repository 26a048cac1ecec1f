"""The one polling helper of the tests: wait until a probe says yes, with a deadline."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


@overload
async def wait_for(
    probe: Callable[[], Awaitable[T | None]],
    *,
    within: float = 90.0,
    what: str = "condition",
    every: float = 0.1,
) -> T: ...


@overload
async def wait_for(
    probe: Callable[[], T | None],
    *,
    within: float = 90.0,
    what: str = "condition",
    every: float = 0.1,
) -> T: ...


async def wait_for(
    probe: Callable[[], Any],
    *,
    within: float = 90.0,
    what: str = "condition",
    every: float = 0.1,
) -> Any:
    """Call ``probe`` (sync or async) until it returns something other than None or False;
    that value. AssertionError after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(every)


def until(check: Callable[[], T | None], what: str, within: float = 60.0, every: float = 0.1) -> T:
    """``wait_for`` for a synchronous test (no event loop in this thread): polls with sleeps."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        time.sleep(every)
