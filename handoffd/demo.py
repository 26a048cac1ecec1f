"""``handoff demo``: a server and two daemons on this machine, and one session handed over.

Everything runs as separate processes on loopback with their own homes under a
temporary folder (the daemons' mDNS too: nothing is announced on the real network): an embedded ``handoff-server`` (SQLite), a daemon "laptop" and
a daemon "desk". Both pair through the invite flow, the example notes app
publishes a session on laptop, it is handed to desk with a progress bar, desk
launches the notes app, which prints the resumed context and confirms; laptop
sees "resumed". Without ``--keep`` everything is stopped and removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from handoffd import console
from handoffd.errors import HandoffError

if TYPE_CHECKING:
    from handoffd.control.client import HandoffClient


def _client(**kwargs: Any) -> HandoffClient:
    """The SDK client (imported on use: ``handoff --help`` does not load aiohttp)."""
    from handoffd.control.client import HandoffClient

    return HandoffClient(**kwargs)


ACCOUNT = "demo"
START_TIMEOUT = 30.0
HANDOFF_TIMEOUT = 120.0
# The control API takes at most 1,024 items per session: messages plus one document.
MESSAGES = 100
_READY = re.compile(r"handoff-server listening url=(\S+) fingerprint=(\S+)")
_URL = re.compile(r"^url:\s+(\S+)", re.MULTILINE)
# The demo's daemons find each other over mDNS on loopback only: a demo never announces
# itself on the network this machine is on (handoffd.daemon.mdns_interfaces).
DAEMON_ENV = {"HANDOFF_MDNS_INTERFACES": "127.0.0.1"}


class DemoError(HandoffError):
    """The demo could not run to the end."""

    default_code = "demo-failed"


def _say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def _example_app() -> Path:
    """The example notes app shipped in the repository's examples/."""
    here = Path(__file__).resolve().parent.parent / "examples" / "notes_app.py"
    if not here.is_file():
        raise DemoError(
            f"the example app is missing ({here}); run the demo from a checkout "
            "installed with `pip install -e .`",
            code="demo-no-example-app",
        )
    return here


@dataclass
class Demo:
    """The processes and folders of one demo run."""

    root: Path
    keep: bool = False
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[IO[bytes]] = field(default_factory=list)

    def home(self, name: str) -> Path:
        """The home folder of daemon ``name``."""
        return self.root / name

    def spawn(
        self,
        argv: Sequence[str],
        *,
        log: str,
        stdout_to_terminal: bool = False,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a process whose stderr goes to ``<root>/<log>.log``."""
        f = (self.root / f"{log}.log").open("ab")
        self.logs.append(f)
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=None if stdout_to_terminal else subprocess.PIPE,
            stderr=f,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        """Stop every process this demo started (by PID), then close logs."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for f in self.logs:
            f.close()


def _run(argv: Sequence[str], *, stdin: bytes | None = None, timeout: float = 60.0) -> str:
    done = subprocess.run(
        list(argv), input=stdin, capture_output=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise DemoError(
            f"{' '.join(argv[:4])} failed: {done.stderr.decode(errors='replace').strip()}"
        )
    return done.stdout.decode("utf-8", errors="replace")


def _start_server(demo: Demo) -> tuple[str, str]:
    data = demo.root / "server"
    proc = demo.spawn(
        [
            sys.executable,
            "-m",
            "handoffd.server.cli",
            "serve",
            "--data",
            str(data),
            "--listen",
            "127.0.0.1:0",
        ],
        log="server",
    )
    assert proc.stdout is not None  # noqa: S101 - we asked for a pipe
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode("utf-8", errors="replace")
        if not line:
            break
        m = _READY.search(line)
        if m:
            return m.group(1), m.group(2)
    raise DemoError(f"the server did not start; see {demo.root / 'server.log'}")


async def _wait_daemon(home: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    async with _client(home=home, timeout=5) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise DemoError(f"daemon in {home} exited with {proc.returncode}")
            with contextlib.suppress(HandoffError):
                await client.status()
                return
            await asyncio.sleep(0.1)
    raise DemoError(f"daemon in {home} did not come up")


def _invite(demo: Demo, *, show_qr: bool) -> str:
    argv = [
        sys.executable,
        "-m",
        "handoffd.server.cli",
        "invite",
        ACCOUNT,
        "--data",
        str(demo.root / "server"),
    ]
    if not show_qr:
        argv.append("--no-qr")
    out = _run(argv)
    if show_qr:
        print(out, flush=True)
    m = _URL.search(out)
    if not m:
        raise DemoError("the server printed no invite URL")
    return m.group(1)


async def _progress(client: HandoffClient, handoff_id: str) -> dict[str, Any]:
    """Draw the progress bar of ``handoff send`` until the handoff ends (or time runs out)."""
    try:
        async with asyncio.timeout(HANDOFF_TIMEOUT):
            return await console.follow(client, handoff_id, prefix="demo: ", out=sys.stdout)
    except TimeoutError:
        raise DemoError("the handoff did not finish in time") from None


async def _run_demo(demo: Demo) -> int:
    app = _example_app()
    _say(f"working in {demo.root}")
    url, fingerprint = _start_server(demo)
    _say(f"server at {url} (TLS fingerprint {fingerprint[:23]}…)")
    password = demo.root / "password"
    password.write_text(secrets.token_urlsafe(16))
    password.chmod(0o600)
    _run(
        [
            sys.executable,
            "-m",
            "handoffd.server.cli",
            "account",
            "create",
            ACCOUNT,
            "--data",
            str(demo.root / "server"),
            "--password-file",
            str(password),
        ]
    )

    daemons = {}
    for name in ("laptop", "desk"):
        home = demo.home(name)
        home.mkdir(mode=0o700)
        proc = demo.spawn(
            [sys.executable, "-m", "handoffd.daemon", "--home", str(home)],
            log=name,
            stdout_to_terminal=True,
            env=DAEMON_ENV,
        )
        daemons[name] = proc
    for name, proc in daemons.items():
        await _wait_daemon(demo.home(name), proc)
    _say("two daemons up: laptop and desk")

    for i, name in enumerate(("laptop", "desk")):
        invite = _invite(demo, show_qr=i == 0)
        async with _client(home=demo.home(name)) as client:
            await client.pair(invite, name=name)
        _say(f"{name} paired through the invite")

    _run([sys.executable, str(app), "--home", str(demo.home("desk")), "register"])
    document = demo.root / "itinerary.txt"
    document.write_text("Day 1: Lisbon\nDay 2: Porto\n" * 2000)
    session_id = _run(
        [
            sys.executable,
            str(app),
            "--home",
            str(demo.home("laptop")),
            "publish",
            "--messages",
            str(MESSAGES),
            "--document",
            str(document),
        ]
    ).strip()
    _say(f"laptop published session {session_id} ({MESSAGES} messages and a document)")

    async with _client(home=demo.home("laptop")) as laptop:
        target = await _wait_for_peer(laptop, "desk")
        started: dict[str, Any] = await laptop.request(
            "POST", "/v1/handoffs", {"session_id": session_id, "target": target}
        )
        _say(f"handing the session to desk (handoff {started['id']})")
        final = await _progress(laptop, str(started["id"]))
    if final.get("state") != "resumed":
        raise DemoError(f"the handoff ended {final.get('state')}: {final.get('error')}")
    _say("desk resumed the session; laptop was told. Done.")
    return 0


async def _wait_for_peer(client: HandoffClient, name: str) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        for device in await client.devices():
            if device.name == name and not device.self and device.nearby:
                return device.device_id
        await asyncio.sleep(0.2)
    raise DemoError(f"{name} was not found nearby")


def run(*, keep: bool = False) -> int:
    """Run the demo; 0 on success."""
    # A short root keeps the control sockets under the AF_UNIX path limit.
    short = "/tmp" if os.path.isdir("/tmp") else None  # noqa: S108 - mkdtemp makes it private
    root = Path(tempfile.mkdtemp(prefix="hdemo-", dir=short))
    demo = Demo(root=root, keep=keep)
    try:
        code = asyncio.run(_run_demo(demo))
    except (HandoffError, OSError, subprocess.SubprocessError) as exc:
        print(f"demo: failed: {exc}", file=sys.stderr)
        print(f"demo: logs are in {root}", file=sys.stderr)
        code = 1
        keep_files = True
    else:
        keep_files = keep
    if keep and code == 0:
        _say("--keep: everything stays up. Talk to the daemons with:")
        for name in ("laptop", "desk"):
            _say(f"  handoff --home {demo.home(name)} status")
        _say(f"stop them with: kill {' '.join(str(p.pid) for p in demo.procs)}")
        return code
    demo.stop()
    if not keep_files:
        shutil.rmtree(root, ignore_errors=True)
    return code


def cmd_demo(args: argparse.Namespace) -> int:
    """A server and two daemons on this machine; one session handed over."""
    return run(keep=args.keep)
