"""Real zeroconf multicast on loopback between Discovery instances (and a peer process)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from zeroconf import IPVersion
from zeroconf._dns import DNSPointer
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from handoffd.discovery import txt
from handoffd.discovery.browse import DiscoveryEvent, PeerSighting
from handoffd.discovery.liveness import LivenessPolicy
from handoffd.discovery.mdns import Discovery
from handoffd.discovery.unicast import parse_unicast_peer
from tests.support.waiting import wait_for

KEY = secrets.token_bytes(32)
"""This run's marker key. Every run uses the same device ids and ports on the machine's one
loopback: with a key of its own, another run's advertisements are strangers to this one."""
STRANGER_KEY = secrets.token_bytes(32)
A, B, C, D = "A" * 32, "B" * 32, "C" * 32, "D" * 32
LO = ["127.0.0.1"]
PEER = str(Path(__file__).parent / "peer_proc.py")
ROOT = str(Path(__file__).parent.parent.parent)
FAST = LivenessPolicy(
    stale_after=0.5, check_timeout=1.0, retry_after=0.3, misses_for_gone=3, lost_recheck=0.5
)


def _cached(d: Discovery, name: str) -> bool:
    """True once ``d``'s browser has taken in ``name``'s advertisement (and run its callbacks:
    zeroconf fires them in the same step that updates the cache), false once its goodbye has."""
    azc = d._zeroconf()
    assert azc is not None
    return any(
        isinstance(r, DNSPointer) and r.alias.lower() == name.lower()
        for r in azc.zeroconf.cache.async_all_by_details(txt.SERVICE_TYPE, 12, 1)  # PTR, IN
    )


def _make(
    device: str,
    port: int,
    events: list[DiscoveryEvent] | None = None,
    *,
    key: bytes = KEY,
    known: Callable[[], frozenset[str]] = lambda: frozenset({A, B, D}),
    **kwargs: object,
) -> Discovery:
    sink = events if events is not None else []
    kwargs.setdefault("interfaces", LO)
    return Discovery(
        device_id=device,
        port=port,
        marker_key=key,
        known_devices=known,
        on_change=sink.append,
        **kwargs,  # type: ignore[arg-type]
    )


def _kinds(events: list[DiscoveryEvent], device: str) -> list[str]:
    return [e.kind for e in events if e.peer.device_id == device]


@pytest_asyncio.fixture
async def pair() -> AsyncIterator[tuple[Discovery, Discovery, list[DiscoveryEvent]]]:
    events: list[DiscoveryEvent] = []
    a = _make(A, 1111, events)
    b = _make(B, 2222)
    await a.start()
    await b.start()
    try:
        yield a, b, events
    finally:
        await a.close()
        await b.close()


@pytest.fixture
def no_errors(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING)
    return caplog


def _assert_no_errors(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


@pytest.mark.asyncio
async def test_peers_find_each_other_and_goodbye_removes(
    pair: tuple[Discovery, Discovery, list[DiscoveryEvent]], no_errors: pytest.LogCaptureFixture
) -> None:
    a, b, events = pair
    await wait_for(lambda: a.lookup(B) is not None and b.lookup(A) is not None)
    seen = a.lookup(B)
    assert seen is not None
    assert (seen.port, seen.addresses, seen.via) == (2222, ("127.0.0.1",), "mdns")
    assert seen.instance == b.instance
    assert abs(seen.last_seen - time.time()) < 60
    assert a.lookup(A) is None  # never ourselves
    assert [p.device_id for p in a.peers()] == [B]
    await b.close()
    await b.close()  # idempotent
    await wait_for(lambda: a.lookup(B) is None)  # the goodbye, not a liveness timeout
    assert _kinds(events, B) == ["nearby", "gone"]
    _assert_no_errors(no_errors)


@pytest.mark.asyncio
async def test_advertisement_carries_only_markers(
    pair: tuple[Discovery, Discovery, list[DiscoveryEvent]],
) -> None:
    _a, b, _events = pair
    day = txt.day_of(time.time())
    marker = txt.device_marker(KEY, B, day)
    assert b.instance == txt.instance_name(marker)
    observer = AsyncZeroconf(interfaces=LO, ip_version=IPVersion.V4Only)
    try:
        info = AsyncServiceInfo(txt.SERVICE_TYPE, b.instance)
        assert await info.async_request(observer.zeroconf, 5000)
        assert info.properties == {
            b"v": b"1",
            b"d": marker.encode(),
            b"a": txt.account_marker(KEY, day).encode(),
        }
        assert info.server == txt.host_name(marker)
        assert info.port == 2222
        everything = f"{info.name} {info.server} {info.properties!r}".lower()
        assert B.lower() not in everything
    finally:
        await observer.async_close()


async def _register(zc: AsyncZeroconf, name: str, props: dict[bytes, bytes], port: int) -> None:
    info = AsyncServiceInfo(
        txt.SERVICE_TYPE,
        name,
        port=port,
        properties=props,
        server=name.split(".")[0] + ".local.",
        parsed_addresses=["127.0.0.1"],
    )
    announce = await zc.async_register_service(info, cooperating_responders=True)
    await announce


@pytest.mark.asyncio
async def test_strangers_spoofs_and_malformed_records_are_dropped(
    pair: tuple[Discovery, Discovery, list[DiscoveryEvent]], no_errors: pytest.LogCaptureFixture
) -> None:
    a, _b, events = pair
    examined: set[str] = set()
    sighted = a.browser.sighted

    def spy(name: str, *args: Any) -> None:
        examined.add(name.lower())
        sighted(name, *args)

    a.browser.sighted = spy  # type: ignore[method-assign,assignment]
    day = txt.day_of(time.time())
    account = txt.account_marker(KEY, day).encode()
    stranger = _make(C, 3333, key=STRANGER_KEY, known=lambda: frozenset({C}))
    await stranger.start()
    raw = AsyncZeroconf(interfaces=LO, ip_version=IPVersion.V4Only)
    try:
        # D is a device A knows but that is not running: each of its names carries a bad TXT.
        d_yesterday, d_today, d_tomorrow = (
            txt.instance_name(txt.device_marker(KEY, D, day + i)) for i in (-1, 0, 1)
        )
        await _register(raw, d_yesterday, {b"v": b"1", b"d": b"zz" * 10, b"a": account}, 4001)
        junk = {f"k{i}".encode(): bytes([0xFF, i]) for i in range(20)}
        marker_today = txt.device_marker(KEY, D, day).encode()
        await _register(raw, d_today, {**junk, b"v": b"1", b"d": marker_today, b"a": account}, 4002)
        # A spoof: a known device's name with another device's (B's) markers and port.
        b_marker = txt.device_marker(KEY, B, day).encode()
        await _register(raw, d_tomorrow, {b"v": b"1", b"d": b_marker, b"a": account}, 6666)
        # A name that is no marker of ours at all, with B's TXT copied.
        not_a_marker = "n" * 10 + "." + txt.SERVICE_TYPE
        await _register(raw, not_a_marker, {b"v": b"1", b"d": b_marker}, 6667)
        await wait_for(lambda: a.lookup(B) is not None)
        # Every advertisement has been resolved and judged (D's names), or seen and passed over.
        await wait_for(
            lambda: {d_yesterday.lower(), d_today.lower(), d_tomorrow.lower()} <= examined
        )
        await wait_for(lambda: _cached(a, not_a_marker) and _cached(a, stranger.instance))
        await wait_for(lambda: _cached(stranger, a.instance))
        seen = a.lookup(B)
        assert seen is not None
        assert seen.port == 2222
        assert [p.device_id for p in a.peers()] == [B]
        assert {e.peer.device_id for e in events} == {B}
        assert all(e.peer.port == 2222 for e in events)
        assert stranger.lookup(A) is None  # they do not see us either
    finally:
        await raw.async_close()
        await stranger.close()
    _assert_no_errors(no_errors)


@pytest.mark.asyncio
async def test_update_port_is_seen_by_peers(
    pair: tuple[Discovery, Discovery, list[DiscoveryEvent]],
) -> None:
    a, b, events = pair
    await wait_for(lambda: a.lookup(B) is not None)
    await b.update_port(2223)
    await wait_for(lambda: (seen := a.lookup(B)) is not None and seen.port == 2223)
    assert [e.peer.port for e in events if e.peer.device_id == B] == [2222, 2223]
    with pytest.raises(ValueError, match="port"):
        await b.update_port(0)


@pytest.mark.asyncio
async def test_day_rotation_keeps_peers_without_a_gap(no_errors: pytest.LogCaptureFixture) -> None:
    events: list[DiscoveryEvent] = []
    offset = [0.0]
    a = _make(A, 1111, events)
    b = _make(B, 2222, clock=lambda: time.time() + offset[0], interface_poll=3600)
    await a.start()
    await b.start()
    try:
        await wait_for(lambda: a.lookup(B) is not None)
        old = b.instance
        offset[0] = 86400.0
        await b.refresh()
        assert b.instance != old
        await wait_for(lambda: (seen := a.lookup(B)) is not None and seen.instance == b.instance)
        await wait_for(lambda: not _cached(a, old))  # the old name's goodbye has been processed
        assert a.lookup(B) is not None
        assert _kinds(events, B) == ["nearby"]
    finally:
        await a.close()
        await b.close()
    _assert_no_errors(no_errors)


@pytest.mark.asyncio
async def test_known_devices_are_read_live() -> None:
    known: set[str] = {A}
    a = _make(A, 1111, known=lambda: frozenset(known))
    b = _make(B, 2222)
    await a.start()
    await b.start()
    try:
        await wait_for(lambda: b.lookup(A) is not None)  # A's advertisement is out and resolved
        await wait_for(lambda: _cached(a, b.instance))  # A has seen B's and passed it over
        assert a.lookup(B) is None  # B is not (yet) one of ours
        assert b.instance not in a.browser._resolving
        known.add(B)  # paired meanwhile: the cached advertisement is resolved now
        await wait_for(lambda: a.lookup(B) is not None)
    finally:
        await a.close()
        await b.close()


@pytest.mark.asyncio
async def test_known_devices_change_seen_first_by_another_reader_still_resolves_the_cache() -> None:
    """The known set is read by the liveness tick and by every browser callback (any other
    advertisement arriving: frequent on a busy LAN). Whichever reads a change first, the cached
    advertisement of a newly known device is resolved."""
    known: set[str] = {A}
    a = _make(A, 1111, known=lambda: frozenset(known))
    b = _make(B, 2222)
    await a.start()
    await b.start()
    try:
        await wait_for(lambda: b.lookup(A) is not None)  # A's advertisement is out and resolved
        await wait_for(lambda: _cached(a, b.instance))  # A has seen B's and passed it over
        assert a.lookup(B) is None  # B is not (yet) one of ours
        assert b.instance not in a.browser._resolving
        known.add(B)
        a.browser.refresh_book()  # what a browser callback for another advertisement does first
        await wait_for(lambda: a.lookup(B) is not None)
    finally:
        await a.close()
        await b.close()


@pytest.mark.asyncio
async def test_unicast_peer_found_by_the_callers_probe() -> None:
    events: list[DiscoveryEvent] = []
    asked: list[tuple[str, int]] = []

    async def hello(host: str, port: int) -> str | None:
        asked.append((host, port))
        return {4999: B, 4998: C}.get(port)  # C is not one of ours

    a = _make(
        A, 1111, events, unicast_peers=["127.0.0.1:4999", "127.0.0.1:4998", "not a host:1"],
        unicast_probe=hello, unicast_interval=0.2,
    )  # fmt: skip
    await a.start()
    try:
        await wait_for(lambda: a.lookup(B) is not None)
        assert a.lookup(B) == PeerSighting(
            B, ("127.0.0.1",), 4999, a.peers()[0].last_seen, via="unicast"
        )
        await wait_for(lambda: ("127.0.0.1", 4998) in asked)
        assert a.lookup(C) is None
        assert {e.peer.device_id for e in events} == {B}
    finally:
        await a.close()


def test_parse_unicast_peer() -> None:
    assert parse_unicast_peer("192.0.2.7") == ("192.0.2.7", 5353)
    assert parse_unicast_peer("192.0.2.7:4500") == ("192.0.2.7", 4500)
    assert parse_unicast_peer("laptop.lan:4500") == ("laptop.lan", 4500)
    assert parse_unicast_peer("[fd00::1]:4500") == ("fd00::1", 4500)
    assert parse_unicast_peer("[fd00::1]") == ("fd00::1", 5353)
    assert parse_unicast_peer("fd00::1") == ("fd00::1", 5353)
    for bad in ("", "host:0", "host:70000", "host:x", "[fd00::1", "[fd00::1]x", "a b:1", "\x00:1"):
        assert parse_unicast_peer(bad) is None, bad


@pytest.mark.asyncio
async def test_close_before_start_and_start_twice() -> None:
    d = _make(A, 1111)
    await d.close()
    with pytest.raises(RuntimeError):
        await d.start()
    e = _make(A, 1111)
    await e.start()
    try:
        with pytest.raises(RuntimeError):
            await e.start()
    finally:
        await e.close()
    with pytest.raises(ValueError, match="port"):
        _make(A, 0)


@pytest.mark.asyncio
@pytest.mark.timeout(180)  # a peer process started twice, liveness checks running their course
async def test_liveness_keeps_the_living_and_drops_the_killed(
    no_errors: pytest.LogCaptureFixture,
) -> None:
    events: list[DiscoveryEvent] = []
    # FAST, but a check waits up to 3 s for the answer: a loaded machine answers late.
    steady = dataclasses.replace(FAST, check_timeout=3.0)
    a = _make(A, 1111, events, liveness=steady)
    answered: list[bool] = []
    checked = a.browser._live.checked

    def spy(key: str, now: float, *, ok: bool) -> Any:
        if key == B:
            answered.append(ok)
        return checked(key, now, ok=ok)

    a.browser._live.checked = spy  # type: ignore[method-assign]
    await a.start()

    async def peer() -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, PEER, B, "45999", KEY.hex(), f"{A},{B}", "--interface", "127.0.0.1",
            stdout=asyncio.subprocess.DEVNULL, cwd=ROOT,
        )  # fmt: skip
        procs.append(proc)
        return proc

    procs: list[asyncio.subprocess.Process] = []
    try:
        proc = await peer()
        await wait_for(lambda: a.lookup(B) is not None)
        # Alive: it goes stale again and again, and checks are answered over mDNS (a slow
        # machine misses some; never enough in a row to call it gone).
        await wait_for(lambda: answered.count(True) >= 3, within=60)
        assert _kinds(events, B) == ["nearby"]
        proc.send_signal(signal.SIGKILL)  # no goodbye: caches would keep it for minutes
        await proc.wait()
        await wait_for(lambda: a.lookup(B) is None)
        assert _kinds(events, B) == ["nearby", "gone"]
        # It comes back under the same (cached) name: found again.
        await peer()
        await wait_for(lambda: a.lookup(B) is not None)
        assert _kinds(events, B) == ["nearby", "gone", "nearby"]
    finally:
        for p in procs:
            if p.returncode is None:
                p.send_signal(signal.SIGKILL)
                await p.wait()
        await a.close()
    _assert_no_errors(no_errors)


@pytest.mark.asyncio
async def test_start_without_a_usable_interface_retries_instead_of_raising(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="handoffd.discovery")
    d = _make(A, 1111, interfaces=["198.51.100.1"], interface_poll=0.2)  # not on this host
    await d.start()
    try:
        await wait_for(
            lambda: sum("mDNS not started" in r.getMessage() for r in caplog.records) >= 2
        )
        assert d.peers() == []
        assert d.instance == ""
    finally:
        await d.close()
