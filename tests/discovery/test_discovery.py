"""Discovery: markers and TXT (pure), and real zeroconf multicast between peers."""

from __future__ import annotations

import asyncio
import json
import selectors
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from handoffd.discovery import txt
from handoffd.discovery.mdns import Discovery, DiscoveryEvent
from tests.lab import Host, Lab

KEY = b"\x01" * 32
A, B, C = "A" * 32, "B" * 32, "C" * 32
PEER = str(Path(__file__).parent / "peer_proc.py")
ROOT = str(Path(__file__).parent.parent.parent)


# ---------------------------------------------------------------- pure


def test_markers_rotate_daily_and_need_the_key() -> None:
    assert txt.device_marker(KEY, A, 100) != txt.device_marker(KEY, A, 101)
    assert txt.device_marker(KEY, A, 100) != txt.device_marker(b"\x02" * 32, A, 100)
    assert txt.account_marker(KEY, 5) != txt.account_marker(b"\x02" * 32, 5)
    book = txt.MarkerBook(KEY)
    now = 100 * 86400 + 10
    book.update(frozenset({A, B}), now)
    ours = txt.Txt("1", txt.device_marker(KEY, B, 100), txt.account_marker(KEY, 100))
    assert book.is_ours(ours)
    assert book.device_for(ours) == B
    yesterday = txt.Txt("1", txt.device_marker(KEY, A, 99), txt.account_marker(KEY, 99))
    assert book.device_for(yesterday) == A
    old = txt.Txt("1", txt.device_marker(KEY, A, 90), txt.account_marker(KEY, 90))
    assert not book.is_ours(old)
    assert book.device_for(old) is None


def test_txt_roundtrip_and_strictness() -> None:
    record = txt.Txt("1", "a" * 20, "b" * 16)
    props = {k.encode(): v.encode() for k, v in record.encode().items()}
    assert txt.decode_txt(props) == record
    assert txt.decode_txt({**props, b"v": b"2"}) is None
    assert txt.decode_txt({**props, b"d": b"Z" * 20}) is None
    assert txt.decode_txt({**props, b"a": b"b" * 15}) is None
    assert txt.decode_txt({**props, b"d": b"\xff" * 20}) is None
    assert txt.decode_txt({**props, b"extra": b"ok"}) == record
    assert txt.decode_txt(dict.fromkeys(props)) is None


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.binary(max_size=20), st.none() | st.binary(max_size=80), max_size=20))
def test_txt_decoder_never_raises(props: dict[bytes, bytes | None]) -> None:
    out = txt.decode_txt(props)
    assert out is None or isinstance(out, txt.Txt)


# ---------------------------------------------------------------- real multicast, one process


async def _wait(cond: Callable[[], bool], limit: float = 10.0) -> None:
    async with asyncio.timeout(limit):
        while not cond():  # noqa: ASYNC110 - polling state another task updates
            await asyncio.sleep(0.05)


@pytest_asyncio.fixture
async def pair() -> AsyncIterator[tuple[Discovery, Discovery, list[DiscoveryEvent]]]:
    events: list[DiscoveryEvent] = []
    known = frozenset({A, B})
    a = Discovery(
        device_id=A, port=1111, marker_key=KEY, known_devices=lambda: known, on_change=events.append
    )
    b = Discovery(
        device_id=B,
        port=2222,
        marker_key=KEY,
        known_devices=lambda: known,
        on_change=lambda e: None,
    )
    await a.start()
    await b.start()
    try:
        yield a, b, events
    finally:
        await a.close()
        await b.close()


@pytest.mark.asyncio
async def test_peers_find_each_other_and_goodbye_removes(
    pair: tuple[Discovery, Discovery, list[DiscoveryEvent]],
) -> None:
    a, b, events = pair
    await _wait(lambda: a.lookup(B) is not None and b.lookup(A) is not None)
    seen = a.lookup(B)
    assert seen is not None
    assert seen.port == 2222
    assert seen.addresses
    assert a.lookup(A) is None  # never ourselves
    await b.close()
    await _wait(lambda: a.lookup(B) is None)
    assert [e.kind for e in events if e.peer.device_id == B] == ["nearby", "gone"]


@pytest.mark.asyncio
async def test_stranger_of_another_account_is_not_listed(
    pair: tuple[Discovery, Discovery, list[DiscoveryEvent]],
) -> None:
    a, _b, events = pair
    stranger = Discovery(
        device_id=C, port=3333, marker_key=b"\x09" * 32,
        known_devices=lambda: frozenset({C}), on_change=lambda e: None,
    )  # fmt: skip
    await stranger.start()
    try:
        await _wait(lambda: a.lookup(B) is not None)
        await asyncio.sleep(1.0)
        assert a.lookup(C) is None
        assert all(e.peer.device_id != C for e in events)
    finally:
        await stranger.close()


@pytest.mark.asyncio
async def test_killed_peer_is_marked_gone_by_liveness() -> None:
    events: list[DiscoveryEvent] = []
    a = Discovery(
        device_id=A, port=1111, marker_key=KEY, known_devices=lambda: frozenset({A, B}),
        on_change=events.append, liveness_interval=0.5,
    )  # fmt: skip
    await a.start()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, PEER, B, "45999", KEY.hex(), f"{A},{B}",
        stdout=asyncio.subprocess.DEVNULL, cwd=ROOT,
    )  # fmt: skip
    try:
        await _wait(lambda: a.lookup(B) is not None, 15)
        proc.kill()  # no goodbye: caches would keep it for minutes
        await proc.wait()
        await _wait(lambda: a.lookup(B) is None, 15)
        assert [e.kind for e in events] == ["nearby", "gone"]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await a.close()


# ---------------------------------------------------------------- the lab: two hosts


def _events(proc: subprocess.Popen[str], want: str, timeout: float = 15.0) -> bool:
    """Read JSON lines until one of kind ``want`` arrives (False on timeout)."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
            break
        line = proc.stdout.readline()
        if not line:
            break
        if json.loads(line)["kind"] == want:
            return True
    return False


def _peer(host: Host, me: str, unicast: str = "") -> subprocess.Popen[str]:
    argv = [sys.executable, PEER, me, "4500", KEY.hex(), f"{A},{B}", unicast]
    proc: subprocess.Popen[str] = host.popen(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert _events(proc, "started")
    return proc


@pytest.mark.lab
def test_lab_discovery_over_real_multicast(lab: Lab) -> None:
    h0, h1 = lab.hosts
    p0 = _peer(h0, A)
    _peer(h1, B)
    assert _events(p0, "nearby")


@pytest.mark.lab
def test_lab_multicast_blocked_then_unicast_peers(lab: Lab) -> None:
    h0, h1 = lab.hosts
    h0.block_multicast()
    h1.block_multicast()
    p0 = _peer(h0, A)
    _peer(h1, B)
    assert not _events(p0, "nearby", timeout=4)
    p0.kill()  # one responder per host on port 5353, so unicast answers reach the new one
    p0.wait(timeout=10)
    p0u = _peer(h0, A, unicast=h1.address)
    assert _events(p0u, "nearby")
