"""App launches for received sessions: at most one live launch per app, rate-limited per app.

A session that arrives while the app's previous launch still runs is *coalesced*: the running
app finds it in the inbox (and any connected client got ``handoff.received``); when that launch
exits and the newest coalesced session is still wanted, the app is launched once more for it.
Launches of one app are at least ``interval`` seconds apart; one arriving sooner waits for its
turn (only the newest waiting one is kept). So a peer flooding handoffs for one app costs the
receiver at most one process of that app at a time and one launch per ``interval``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from handoffd.handoff.applaunch import AppStarter

logger = logging.getLogger("handoffd.launcher")

Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]


@dataclass(frozen=True, slots=True)
class LaunchRequest:
    """One launch of ``app_id`` for the session ``handoff_id``: the argv and its environment."""

    app_id: str
    handoff_id: str
    argv: tuple[str, ...]
    env: Mapping[str, str]


class Launcher:
    """Runs app launches one at a time per app, ``interval`` apart; later ones coalesce."""

    def __init__(
        self,
        spawn: Spawn,
        *,
        still_wanted: Callable[[LaunchRequest], Awaitable[bool]],
        on_failed: Callable[[LaunchRequest], None],
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        starter: AppStarter | None = None,
    ) -> None:
        """``starter``: how an app is started (default: a plain child process)."""
        self._clock = clock
        self._starter = starter or AppStarter()
        self._spawn = spawn
        self._still_wanted = still_wanted
        self._on_failed = on_failed
        self.interval = interval
        self.live: dict[str, asyncio.subprocess.Process] = {}
        self._last: dict[str, float] = {}
        self._pending: dict[str, LaunchRequest] = {}
        self._timers: set[str] = set()

    async def launch(
        self, app_id: str, handoff_id: str, argv: Sequence[str], env: Mapping[str, str]
    ) -> str:
        """Launch now (``launched``), after the running launch (``coalesced``), after the rate
        limit (``deferred``), or not at all (``failed``: the argv could not be run)."""
        return await self._request(LaunchRequest(app_id, handoff_id, tuple(argv), dict(env)))

    async def _request(self, req: LaunchRequest) -> str:
        app = req.app_id
        proc = self.live.get(app)
        if proc is not None and proc.returncode is None:
            self._pending[app] = req
            logger.info(
                "app still running: launch coalesced app=%s", app, extra={"handoff": req.handoff_id}
            )
            return "coalesced"
        wait = self._last.get(app, -1e18) + self.interval - self._clock()
        if wait > 0:
            self._pending[app] = req
            if app not in self._timers:
                self._timers.add(app)
                self._spawn(self._after(app, wait), "launch-timer")
            logger.info(
                "launch rate-limited: deferred app=%s", app, extra={"handoff": req.handoff_id}
            )
            return "deferred"
        return await self._start(req)

    async def _start(self, req: LaunchRequest) -> str:
        self._last[req.app_id] = self._clock()
        argv, env = self._starter.command(req.app_id, req.handoff_id, req.argv, req.env)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=env, stdin=asyncio.subprocess.DEVNULL
            )
        except OSError as exc:
            logger.warning("app launch failed app=%s error=%s", req.app_id, exc.strerror)
            self._on_failed(req)
            return "failed"
        logger.info(
            "app launched app=%s pid=%d via=%s", req.app_id, proc.pid, self._starter.mode,
            extra={"handoff": req.handoff_id},
        )  # fmt: skip
        self.live[req.app_id] = proc
        self._spawn(self._reap(req.app_id, proc), "reap")
        return "launched"

    async def _reap(self, app: str, proc: asyncio.subprocess.Process) -> None:
        try:
            code = await proc.wait()
            logger.info("app exited app=%s pid=%d status=%d", app, proc.pid, code)
        finally:
            if self.live.get(app) is proc:
                del self.live[app]
        await self._next(app)

    async def _after(self, app: str, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
        finally:
            self._timers.discard(app)
        await self._next(app)

    async def _next(self, app: str) -> None:
        """Launch the newest waiting request of ``app`` if it is still wanted."""
        req = self._pending.pop(app, None)
        if req is not None and await self._still_wanted(req):
            await self._request(req)
