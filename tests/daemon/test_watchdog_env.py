"""sd_notify in a real daemon: the watchdog period, and launched apps do not inherit the socket."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import struct
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from handoffd.control.client import HandoffClient, NewItem
from tests.handoff.helpers import wait_nearby, wait_state
from tests.server.helpers import cli_invite, create_account
from tests.support.processes import DaemonProcess, ServerProcess
from tests.support.waiting import wait_for

Factory = Callable[..., DaemonProcess]
SO_TIMESTAMP = 29  # <asm-generic/socket.h>: a struct timeval per datagram, stamped on arrival
WATCHDOG_USEC = 400_000  # the service manager's timeout; pings are due every half of it
PINGS = 20


def _recv_stamped(sock: socket.socket, d: DaemonProcess) -> tuple[str, float]:
    """One datagram and the kernel's arrival time (the send time, for a local socket)."""
    try:
        data, ancdata, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(16))
    except TimeoutError:
        raise AssertionError(f"no sd_notify message; log: {d.log.read_text()[-3000:]}") from None
    stamp = None
    for level, kind, raw in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMP:
            sec, usec = struct.unpack("@qq", raw[:16])
            stamp = sec + usec / 1e6
    assert stamp is not None, "no SO_TIMESTAMP on the datagram"
    return data.decode(), stamp


def test_watchdog_pings_at_half_the_timeout(daemons: Factory, short_dir: Path) -> None:
    notify_path = short_dir / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(os.fspath(notify_path))
    notify.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
    notify.settimeout(30)  # generous: a loaded machine delays pings, never hurries them
    try:
        d = daemons(env={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": str(WATCHDOG_USEC)})
        d.spawn()
        while _recv_stamped(notify, d)[0] != "READY=1":
            pass
        pings: list[float] = []
        while len(pings) < PINGS:
            message, stamp = _recv_stamped(notify, d)
            if message == "WATCHDOG=1":
                pings.append(stamp)
        assert d.proc is not None
        d.proc.send_signal(signal.SIGTERM)
        while _recv_stamped(notify, d)[0] != "STOPPING=1":
            pass
        assert d.proc.wait(timeout=20) == 0
    finally:
        notify.close()
    # The daemon sleeps a full period between pings (a sleep never ends early), so no gap is
    # shorter than the period; half of it would mean the period was halved twice.
    period = WATCHDOG_USEC / 2 / 1e6
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert min(gaps) > 0.8 * period, gaps


@pytest.mark.asyncio
async def test_launched_apps_do_not_inherit_the_notify_socket() -> None:
    root = Path(tempfile.mkdtemp(prefix="hw", dir="/tmp"))
    notify_path = root / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(os.fspath(notify_path))
    env_file = root / "app-env.json"
    server = ServerProcess(root / "srv").start()
    a = DaemonProcess(root / "a")
    b = DaemonProcess(
        root / "b",
        env={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": ""},
    )
    try:
        create_account(server.data, "ana")
        ids = {}
        for d, name in ((a, "laptop"), (b, "desk")):
            d.home.mkdir(mode=0o700)
            d.start()
            url, _ = cli_invite(server.data, "ana")
            status, body = d.curl("POST", "/v1/pair", {"invite": url, "name": name})
            assert status == 200, body
            ids[name] = str(body["device_id"])
        wait_nearby(a, ids["desk"])
        wait_nearby(b, ids["laptop"])
        dump = "import json, os, sys; open(sys.argv[1], 'w').write(json.dumps(dict(os.environ)))"
        async with (
            HandoffClient(a.socket, timeout=30) as ca,
            HandoffClient(b.socket, timeout=30) as cb,
        ):
            await cb.register_app(
                "org.example.envdump", [sys.executable, "-c", dump, str(env_file)]
            )
            session = await ca.publish(
                "org.example.envdump", "env", items=[NewItem.of_text("message", "m.txt", "hi")]
            )
            h = await ca.send(session.id, "desk")
            done = await wait_state(ca, h.id, {"delivered", "resumed", "failed", "declined"})
            assert done["state"] in {"delivered", "resumed"}, done

            async def written() -> dict[str, str] | None:
                try:
                    text = env_file.read_text()
                    return dict(json.loads(text)) if text else None
                except (FileNotFoundError, json.JSONDecodeError):
                    return None

            seen = await wait_for(written, within=60, what="the launched app's environment")
        assert seen["HANDOFF_ID"] == h.id  # what the daemon passed to the app it launched
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            assert name not in seen
    finally:
        for d in (a, b):
            d.kill()
        server.stop()
        notify.close()
        shutil.rmtree(root, ignore_errors=True)
