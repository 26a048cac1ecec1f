"""``handoffd``: the composition root. Builds paths, settings, store, identity and the control API
and runs them in one TaskGroup until SIGTERM; SIGHUP reloads ``config.toml``.

Start-up order: the home's lock (a second daemon on the same home refuses to
start), settings, state, device identity, then the control socket (a stale
one left by a crash is replaced: holding the lock proves nobody serves it);
READY=1 goes to the service manager only once the socket accepts connections.

Everything is built here, explicitly: the handoff engine (``handoffd.handoff.engine``) with
the LAN signaling listener, mDNS discovery and the server path it supervises, and the control
API with the engine's routes. The environment's tunables are read once, into ``Timings``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import functools
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from aiohttp import web

from handoffd import __version__, logfmt
from handoffd.config import SettingsFile, save_settings
from handoffd.control.handoff_routes import setup_handoff_routes
from handoffd.control.inbox_routes import setup_inbox_routes
from handoffd.control.send_routes import setup_send_routes
from handoffd.control.server import (
    HEARTBEAT,
    ControlContext,
    ControlServer,
    make_app,
)
from handoffd.devicestate import DeviceState
from handoffd.discovery.mdns import Discovery
from handoffd.errors import ConfigError, HandoffError
from handoffd.events import EventBus
from handoffd.handoff.engine import Engine, EngineInputs
from handoffd.handoff.timings import SystemClock, Timings
from handoffd.paths import Paths
from handoffd.peering import ServerPath
from handoffd.sdnotify import SdNotifier
from handoffd.store import Store
from handoffd.tasks import TaskSet
from handoffd.transport import webrtc
from handoffd.transport.base import LocalIdentity
from handoffd.transport.lanlistener import LanListener

logger = logging.getLogger("handoffd.daemon")

# ---------------------------------------------------------------- logging

setup_logging = logfmt.setup_logging
"""Logs on stderr in the one format of daemon and server (``handoffd.logfmt``)."""


# ---------------------------------------------------------------- the lock


def acquire_lock(paths: Paths) -> IO[str]:
    """Hold ``paths.lock_file`` (flock) for the daemon's life; ConfigError if another holds it."""
    # Before a file is made: a home, run/ or data dir of another user is refused (home-unsafe).
    paths.ensure_private()
    os.chmod(paths.runtime_dir, 0o700)
    fd = os.open(paths.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    f = os.fdopen(fd, "r+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = f.read(32).strip()
        f.close()
        raise ConfigError(
            f"another handoffd is already running for {paths.data_dir} (pid {other or '?'}); "
            "stop it first, or use another --home",
            code="already-running",
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


# ---------------------------------------------------------------- the daemon

MDNS_INTERFACES_ENV = "HANDOFF_MDNS_INTERFACES"


def mdns_interfaces(environ: Mapping[str, str]) -> tuple[str, ...] | None:
    """The IPv4 addresses mDNS is limited to (``HANDOFF_MDNS_INTERFACES=127.0.0.1,…``), or
    None for every interface. ``handoff demo`` sets it to loopback: a demo never announces
    itself on the real network. ConfigError for anything but IPv4 addresses."""
    raw = environ.get(MDNS_INTERFACES_ENV, "").strip()
    if not raw:
        return None
    found: list[str] = []
    for word in raw.split(","):
        try:
            found.append(str(ipaddress.IPv4Address(word.strip())))
        except ValueError:
            raise ConfigError(
                f"{MDNS_INTERFACES_ENV}: {word.strip()!r:.40} is not an IPv4 address",
                code="bad-env",
            ) from None
    return tuple(dict.fromkeys(found))


class Daemon:
    """One device daemon for ``paths``; ``await run()`` until ``stop()`` or SIGTERM."""

    def __init__(
        self,
        paths: Paths,
        *,
        timings: Timings | None = None,
        environ: Mapping[str, str] | None = None,
        heartbeat: float = HEARTBEAT,
        handle_signals: bool = True,
    ) -> None:
        self.paths = paths
        self.timings = timings or Timings()
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.heartbeat = heartbeat
        self.handle_signals = handle_signals
        # Unset: launched apps must not inherit NOTIFY_SOCKET/WATCHDOG_* (a child pinging or
        # READY-ing on our behalf would mislead the service manager).
        self.notifier = SdNotifier.from_env(unset_environment=True)
        self.ctx: ControlContext | None = None
        self.engine: Engine | None = None
        self._stop = asyncio.Event()
        self._tasks = TaskSet("daemon")

    def stop(self) -> None:
        """Ask the daemon to stop (idempotent; safe from a signal handler)."""
        self._stop.set()

    async def run(self) -> int:
        """Run until stopped; 0 on a clean stop."""
        self.paths.check_socket_path()
        self.notifier.status("starting")
        lock = await asyncio.to_thread(acquire_lock, self.paths)
        try:
            return await self._run_locked()
        finally:
            lock.close()
            self.notifier.close()

    async def _run_locked(self) -> int:
        paths = self.paths
        await asyncio.to_thread(paths.data_dir.mkdir, parents=True, exist_ok=True, mode=0o700)
        settings = await asyncio.to_thread(SettingsFile.load, paths.config_toml)
        if not await asyncio.to_thread(paths.config_toml.exists):
            await asyncio.to_thread(save_settings, paths.config_toml, settings.current)
        store = await asyncio.to_thread(Store.open, paths.state_db)
        try:
            device = await asyncio.to_thread(DeviceState.load, paths)
            try:
                return await self._serve(settings, store, device)
            finally:
                await device.close()
        finally:
            await asyncio.to_thread(store.close)

    async def _serve(self, settings: SettingsFile, store: Store, device: DeviceState) -> int:
        events = EventBus()
        ctx = ControlContext(
            paths=self.paths,
            store=store,
            events=events,
            device=device,
            settings=settings,
            version=__version__,
            heartbeat=self.heartbeat,
        )
        self.ctx = ctx

        def identity_changed(what: str) -> None:
            events.publish({"type": f"identity.{what}"})
            self.notifier.status(self._status_line())

        device.on_change = identity_changed
        engine = self.engine = self._engine(ctx)

        def engine_routes(app: web.Application, ctx: ControlContext) -> None:
            setup_handoff_routes(app, ctx, engine)
            setup_send_routes(app, ctx, engine)
            setup_inbox_routes(app, ctx, engine)

        app = make_app(ctx, [engine_routes])
        server = ControlServer(app, self.paths.control_socket)
        loop = asyncio.get_running_loop()
        if self.handle_signals:
            loop.add_signal_handler(signal.SIGTERM, self.stop)
            loop.add_signal_handler(signal.SIGINT, self.stop)
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        try:
            async with asyncio.TaskGroup() as tg:
                self._tasks.bind(tg)
                await server.start()
                self.notifier.ready()
                self.notifier.status(self._status_line())
                logger.info(
                    "handoffd ready device=%s paired=%s socket=%s",
                    device.device_id,
                    device.paired,
                    self.paths.control_socket,
                )
                self._spawn(device.maintain(), "identity-maintenance")
                interval = self.notifier.watchdog_interval()
                if interval is not None:
                    self._spawn(self._watchdog(interval), "watchdog")
                self._spawn(self._run_engine(engine), "handoff-engine")
                await self._stop.wait()
                logger.info("handoffd stopping")
                self.notifier.stopping()
                self.notifier.status("stopping")
                events.close()
                await server.close()
                await self._tasks.close()
        finally:
            if self.handle_signals:
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(signum)
            events.close()
            await server.close()
        logger.info("handoffd stopped")
        return 0

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        # The daemon's own tasks are vital: one that fails takes the daemon down.
        self._tasks.spawn(coro, name, contain=False)

    def _engine(self, ctx: ControlContext) -> Engine:
        """The handoff engine with its signaling listener, discovery and server path."""

        def make_signaling(
            on_offer: Callable[[bytes], Awaitable[bytes]], local: Callable[[], LocalIdentity]
        ) -> LanListener:
            # Bound by the engine only while paired with LAN discovery on.
            port = self.timings.signaling_port
            return LanListener("0.0.0.0", port, on_offer, local=local)  # noqa: S104

        interfaces = mdns_interfaces(self.environ)
        make_discovery = (
            Discovery if interfaces is None else functools.partial(Discovery, interfaces=interfaces)
        )
        return Engine(
            EngineInputs(
                store=ctx.store,
                device=ctx.device,
                settings=ctx.settings,
                events=ctx.events,
                paths=ctx.paths,
                board=ctx,
                timings=self.timings,
                clock=SystemClock(),
                environ=self.environ,
                make_signaling=make_signaling,
                make_discovery=make_discovery,
                make_server_path=ServerPath,
                accept_offer=webrtc.accept,
            )
        )

    async def _run_engine(self, engine: Engine) -> None:
        """The engine until the daemon stops; if it crashes, the daemon goes down with it
        (non-zero exit: the service manager restarts it)."""
        await engine.run()

    def _status_line(self) -> str:
        ctx = self.ctx
        if ctx is None:
            return "starting"
        device = ctx.device
        account = f"paired, account {device.account_id}" if device.paired else "not paired"
        return f"ready: {ctx.settings.current.device_name} ({account})"

    def _on_sighup(self) -> None:
        if not self._stop.is_set():
            self._spawn(self._reload(), "reload")

    async def _reload(self) -> None:
        ctx = self.ctx
        if ctx is None:
            return
        self.notifier.reloading()
        try:
            await ctx.settings.reload()
        except ConfigError as exc:
            logger.error(
                "settings not reloaded; keeping the old ones code=%s error=%s",
                exc.code,
                exc.message,
            )
            self.notifier.ready()
            return
        self.notifier.ready()
        logger.info("settings reloaded path=%s", ctx.settings.path)
        ctx.events.publish({"type": "settings.changed", "changed": ["*"], "reason": "reload"})
        self.notifier.status(self._status_line())

    async def _watchdog(self, period: float) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(period)


# ---------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """``handoffd [--home DIR] [--log-level LEVEL]``."""
    parser = argparse.ArgumentParser(prog="handoffd", description="the handoff device daemon")
    parser.add_argument(
        "--home",
        type=Path,
        default=None,
        help="keep every file of this daemon under DIR (default: $HANDOFF_HOME, else platform dirs)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--version", action="version", version=f"handoffd {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``handoffd`` console script."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        paths = Paths.resolve(args.home)
        daemon = Daemon(paths, timings=Timings.from_env(os.environ))
        return asyncio.run(daemon.run())
    except HandoffError as exc:
        sys.stderr.write(f"handoffd: error: {exc.message} [{exc.code}]\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"handoffd: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
