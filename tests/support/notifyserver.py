"""A real D-Bus session bus (``dbus-daemon --session``) for the tests, and a stand-in
notification server on it: ``org.freedesktop.Notifications`` that records every ``Notify``
call and can invoke a notification's action (a person pressing its button)."""

import asyncio
import os
import subprocess
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusDict, DBusInt32, DBusSignature, DBusStr, DBusUInt32
from dbus_fast.service import ServiceInterface, dbus_method, dbus_signal

from tests.support.waiting import until

NAME = "org.freedesktop.Notifications"
PATH = "/org/freedesktop/Notifications"
StrList = Annotated[list[str], DBusSignature("as")]


@dataclass(frozen=True)
class Shown:
    """One ``Notify`` call."""

    id: int
    app_name: str
    summary: str
    body: str
    actions: tuple[str, ...]

    def action_key(self, label: str) -> str:
        """The key of the action labelled ``label``."""
        pairs = dict(zip(self.actions[1::2], self.actions[0::2], strict=True))
        return pairs[label]


class _Notifications(ServiceInterface):
    def __init__(self) -> None:
        super().__init__(NAME)
        self.shown: list[Shown] = []
        self.lock = threading.Lock()

    @dbus_method()
    def Notify(  # noqa: N802 - the D-Bus method's name
        self,
        app_name: DBusStr,
        replaces_id: DBusUInt32,
        app_icon: DBusStr,
        summary: DBusStr,
        body: DBusStr,
        actions: StrList,
        hints: Annotated[dict[str, Any], DBusSignature("a{sv}")],
        expire_timeout: DBusInt32,
    ) -> DBusUInt32:
        with self.lock:
            nid = len(self.shown) + 1
            self.shown.append(Shown(nid, app_name, summary, body, tuple(actions)))
        return nid

    @dbus_method()
    def GetCapabilities(self) -> StrList:  # noqa: N802
        return ["actions", "body"]

    @dbus_method()
    def GetServerInformation(  # noqa: N802
        self,
    ) -> Annotated[tuple[str, str, str, str], DBusSignature("ssss")]:
        return ("stand-in", "handoffd tests", "1.0", "1.2")

    @dbus_method()
    def CloseNotification(self, nid: DBusUInt32) -> None:  # noqa: N802
        self.NotificationClosed(nid, 3)

    @dbus_signal()
    def ActionInvoked(  # noqa: N802
        self, nid: DBusUInt32, key: DBusStr
    ) -> Annotated[tuple[int, str], DBusSignature("us")]:
        return (nid, key)

    @dbus_signal()
    def NotificationClosed(  # noqa: N802
        self, nid: DBusUInt32, reason: DBusUInt32
    ) -> Annotated[tuple[int, int], DBusSignature("uu")]:
        return (nid, reason)


_ = DBusDict  # re-exported names used only in annotations above


class SessionBus:
    """``dbus-daemon --session`` on a socket in ``root``, and the stand-in server on it (its
    own thread and event loop). ``address`` goes into the daemons' DBUS_SESSION_BUS_ADDRESS."""

    def __init__(self, root: Path) -> None:
        self.socket = root / "bus"
        self.address = f"unix:path={self.socket}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.server: _Notifications | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None

    def start(self) -> "SessionBus":
        """Start the bus and the stand-in (returns once it owns its name)."""
        self.proc = subprocess.Popen(
            ["dbus-daemon", "--session", "--nofork", f"--address={self.address}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        until(lambda: self.socket.exists() or None, "the session bus socket", within=30)
        ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.result(timeout=30)
        return self

    def _run(self, ready: "Future[None]") -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._serve(ready))
        finally:
            self._loop.close()

    async def _serve(self, ready: "Future[None]") -> None:
        try:
            self._stop = asyncio.Event()
            bus = await MessageBus(bus_address=self.address).connect()
            self.server = _Notifications()
            bus.export(PATH, self.server)
            await bus.request_name(NAME)
        except BaseException as exc:
            ready.set_exception(exc)
            raise
        ready.set_result(None)
        try:
            await self._stop.wait()
        finally:
            bus.disconnect()

    def shown(self) -> list[Shown]:
        """Every notification shown so far."""
        assert self.server is not None
        with self.server.lock:
            return list(self.server.shown)

    def press(self, shown: Shown, label: str) -> None:
        """Press the button ``label`` of a shown notification (``ActionInvoked``)."""
        assert self._loop is not None
        assert self.server is not None
        server = self.server
        key = shown.action_key(label)
        self._loop.call_soon_threadsafe(server.ActionInvoked, shown.id, key)

    def stop(self) -> None:
        """Stop the stand-in and the bus."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        if self.socket.exists():
            os.unlink(self.socket)
