"""Another local user's home or control socket is refused by the daemon, the SDK and the CLI.

The other user is the real ``nobody``: a child process drops to it with
setgid/setuid (so it needs root) and plays the attacker of issue 16 finding 4.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from handoffd import ownership
from handoffd.control.client import HandoffClient, Item
from handoffd.errors import ConfigError, HandoffError
from handoffd.paths import Paths
from tests.support.processes import DaemonProcess

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="playing another uid needs root")

# The attacker: serves HTTP on HOME/run/control.sock and prints every request it receives.
# argv: HOME WHEN, WHEN = "first" (becomes nobody, then makes HOME and run/ itself) or
# "after-bind" (binds in the caller's directory, becomes nobody, then listens: SO_PEERCRED
# reports the listener's credentials as of listen()).
ATTACKER = r"""
import json, os, pwd, socket, sys
home, when = sys.argv[1], sys.argv[2]
nobody = pwd.getpwnam("nobody")
def drop():
    os.setgroups([]); os.setgid(nobody.pw_gid); os.setuid(nobody.pw_uid)
if when == "first":
    drop()
    os.umask(0o022)
    os.makedirs(os.path.join(home, "run"))
path = os.path.join(home, "run", "control.sock")
s = socket.socket(socket.AF_UNIX)
s.bind(path)
os.chmod(path, 0o666)
if when == "after-bind":
    drop()
s.listen(16)
print("ready uid=%d" % os.geteuid(), flush=True)
body = json.dumps({"device_id": "evil", "device_name": "evil", "paired": False,
                   "handoff_enabled": True, "version": "0"}).encode()
while True:
    c, _ = s.accept()
    c.settimeout(5)
    got = b""
    try:
        while True:
            chunk = c.recv(65536)
            if not chunk:
                break
            got += chunk
            head, sep, rest = got.partition(b"\r\n\r\n")
            if sep:
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                if len(rest) >= length:
                    break
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                  + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
    except OSError:
        pass
    print("received %r" % got, flush=True)
    c.close()
"""


class Attacker:
    """The attacker process; ``stop()`` returns everything it printed."""

    def __init__(self, home: Path, when: str) -> None:
        self.home = home
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", ATTACKER, str(home), when],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline().decode()
        assert ready.startswith("ready uid=65534"), (ready, self.proc.stderr)

    def stop(self) -> str:
        """Stop it; its output (the requests it received)."""
        self.proc.kill()
        out, _ = self.proc.communicate(timeout=30)
        return out.decode()


@pytest.fixture
def attacker_home() -> Iterator[Path]:
    """A path under /tmp that nobody (the attacker) will create; removed afterwards."""
    home = Path("/tmp") / f"hdx{secrets.token_hex(4)}"
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HANDOFF_HOME"}
    return subprocess.run(
        [sys.executable, "-m", "handoffd.cli", "--home", str(home), *args],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip


def _sdk_refusals(home: Path) -> list[HandoffError]:
    """What publishing a secret, then asking the status, raises with the SDK on ``home``."""

    async def run() -> list[HandoffError]:
        refusals: list[HandoffError] = []
        async with HandoffClient(home=home, timeout=20) as client:
            with pytest.raises(HandoffError) as caught:
                await client.publish(
                    "org.example.notes",
                    "Draft",
                    items=[Item.of_text("document", "d.md", "the secret text")],
                )
            refusals.append(caught.value)
            with pytest.raises(HandoffError) as caught:
                await client.status()
            refusals.append(caught.value)
        return refusals

    return asyncio.run(run())


@as_root
def test_home_made_by_another_user_is_refused(attacker_home: Path) -> None:
    attacker = Attacker(attacker_home, "first")
    try:
        assert attacker_home.stat().st_uid == 65534
        # The SDK: refused before connecting; the published text never reaches the attacker.
        for refused in _sdk_refusals(attacker_home):
            assert refused.code == "home-unsafe"
            assert "owned by uid 65534" in refused.message
        # The CLI: one clear line, exit 1.
        done = _cli(attacker_home, "status")
        assert done.returncode == 1
        assert "refusing" in done.stderr
        assert "evil" not in done.stdout
        # The daemon: refuses to start on that home, leaves the attacker's socket alone.
        env = {k: v for k, v in os.environ.items() if k != "HANDOFF_HOME"}
        daemon = subprocess.run(
            [sys.executable, "-m", "handoffd.daemon", "--home", str(attacker_home)],
            capture_output=True, text=True, timeout=60, check=False, env=env,
        )  # fmt: skip
        assert daemon.returncode == 1
        assert "[home-unsafe]" in daemon.stderr
        sock = Paths.resolve(attacker_home).control_socket
        assert sock.lstat().st_uid == 65534
    finally:
        received = attacker.stop()
    assert "received" not in received, received


@as_root
def test_socket_served_by_another_uid_is_refused_by_peercred(short_dir: Path) -> None:
    home = short_dir / "h"
    (home / "run").mkdir(parents=True, mode=0o700)
    os.chmod(home, 0o700)
    attacker = Attacker(home, "after-bind")
    try:
        # Directories are ours (the check of modes passes): SO_PEERCRED is what refuses.
        assert stat.S_IMODE((home / "run").stat().st_mode) == 0o700
        for refused in _sdk_refusals(home):
            assert refused.code == "daemon-wrong-user"
        done = _cli(home, "status")
        assert done.returncode == 1
        assert "served by uid 65534" in done.stderr
    finally:
        received = attacker.stop()
    # The attacker saw connections, but not one byte of a request.
    assert "secret" not in received
    assert "GET" not in received
    assert "POST" not in received


def test_group_writable_home_is_refused(short_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HANDOFF_HOME"}
    home = short_dir / "g"
    home.mkdir()
    os.chmod(home, 0o770)  # noqa: S103 - the point of the test
    done = subprocess.run(
        [sys.executable, "-m", "handoffd.daemon", "--home", str(home)],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert done.returncode == 1
    assert "[home-unsafe]" in done.stderr
    assert not (home / "run").exists()


def test_a_new_home_is_made_0700(short_dir: Path) -> None:
    d = DaemonProcess(short_dir / "new").start()
    try:
        for path in (d.home, d.paths.runtime_dir, d.paths.identity_dir):
            assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    finally:
        d.kill()


@as_root
def test_directories_above_and_links_on_the_way_are_checked(short_dir: Path) -> None:
    # short_dir is root's and 0700; build each case below it.
    def refused(path: Path) -> str:
        with pytest.raises(ConfigError) as caught:
            ownership.ensure_private_dir(path)
        assert caught.value.code == "home-unsafe"
        return caught.value.message

    theirs = short_dir / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    assert "above it is owned by uid 65534" in refused(theirs / "home")
    assert not (theirs / "home").exists() or (theirs / "home").stat().st_uid == 0

    open_dir = short_dir / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)  # noqa: S103 - the point of the test
    assert "writable by group or others and not sticky" in refused(open_dir / "home")
    os.chmod(open_dir, 0o1777)  # noqa: S103 - sticky, as /tmp: accepted
    ownership.ensure_private_dir(open_dir / "home2")
    assert stat.S_IMODE((open_dir / "home2").stat().st_mode) == 0o700

    link = short_dir / "link"
    link.symlink_to(short_dir)
    os.chown(link, 65534, 65534, follow_symlinks=False)
    assert "symbolic link of uid 65534" in refused(link / "home3")
    assert not (short_dir / "home3").exists()  # nothing made through their link
