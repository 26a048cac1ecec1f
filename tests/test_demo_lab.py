"""`handoff demo` never announces itself on the network: its mDNS stays on loopback.

In a lab host (a network namespace with a real ``eth0`` on a bridge) the whole demo runs
while a second host listens for mDNS on the bridge. Nothing of the demo arrives there,
though the demo found its daemons nearby (over loopback) and handed the session over
directly. Then, as a control, a zeroconf responder with the library's defaults in the same
host is heard at once: the listener would have seen a demo that leaked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from handoffd.daemon import mdns_interfaces
from handoffd.demo import DAEMON_ENV
from handoffd.errors import ConfigError
from tests.lab import Lab

LISTEN = """
import json, socket, struct, sys, time
me, out = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", 5353))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             struct.pack("4s4s", socket.inet_aton("224.0.0.251"), socket.inet_aton(me)))
with open(out, "a") as f:
    f.write(json.dumps({"ready": True}) + "\\n")
    f.flush()
    while True:
        data, (src, _) = s.recvfrom(9000)
        f.write(json.dumps({"t": time.time(), "src": src, "handoff": b"_handoff" in data}) + "\\n")
        f.flush()
"""

ANNOUNCE = """
import socket, sys, time
from zeroconf import ServiceInfo, Zeroconf
zc = Zeroconf()  # the library's default: every interface
info = ServiceInfo("_handoff._tcp.local.", "control._handoff._tcp.local.",
                   addresses=[socket.inet_aton(sys.argv[1])], port=9)
zc.register_service(info)
time.sleep(3)
zc.unregister_service(info)
zc.close()
"""


def _heard(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def _wait(log: Path, what: str, predicate: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and any(predicate(x) for x in _heard(log)):  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"{what}: not seen in {timeout} s; heard {_heard(log)}")


def test_demo_daemons_use_loopback_only() -> None:
    assert DAEMON_ENV["HANDOFF_MDNS_INTERFACES"] == "127.0.0.1"
    assert mdns_interfaces(DAEMON_ENV) == ("127.0.0.1",)
    assert mdns_interfaces({}) is None
    with pytest.raises(ConfigError, match="not an IPv4 address"):
        mdns_interfaces({"HANDOFF_MDNS_INTERFACES": "eth0"})


@pytest.mark.lab
@pytest.mark.timeout(400)
def test_no_demo_announcement_leaves_the_host(lab: Lab, tmp_path: Path) -> None:
    a, b = lab.hosts
    log = tmp_path / "heard.jsonl"
    b.popen([sys.executable, "-c", LISTEN, b.address, str(log)])
    _wait(log, "the listener", lambda x: x.get("ready"))

    demo = a.run([sys.executable, "-m", "handoffd.cli", "demo"], check=False, timeout=300)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "resumed via direct" in demo.stdout  # found nearby over loopback mDNS
    ended = time.time()

    # Control: the library's default responder in the same host is heard on the bridge.
    a.run([sys.executable, "-c", ANNOUNCE, a.address], timeout=60)
    _wait(log, "the control announcement", lambda x: x.get("src") == a.address)
    during = [x for x in _heard(log) if "t" in x and float(x["t"]) <= ended]  # type: ignore[arg-type]
    assert [x for x in during if x["src"] != b.address] == []
    after = [x for x in _heard(log) if x.get("src") == a.address]
    assert any(x["handoff"] for x in after)
    # Stop the listener ourselves (by PID) rather than leave it to the lab's close.
    listener = b.procs[-1]
    listener.terminate()
    try:
        listener.wait(timeout=10)
    except subprocess.TimeoutExpired:
        listener.kill()
        listener.wait(timeout=10)
