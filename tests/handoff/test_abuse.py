"""A device of the account (or a stranger) abusing the receiver: two real daemons, real aiortc.

Issue 16: findings 5 (launch flood), 10 (disk reservations, stalled sender), 11 (a receiver
link pinned by a pending ``resumed``) and 13 (refusals of strangers flooding status/events).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from handoffd.control.client import Item
from handoffd.errors import ApiError
from handoffd.handoff.policy import DISK_MARGIN
from handoffd.transport import webrtc  # at import: its first import runs ldconfig (blocking)
from handoffd.transport.base import LocalIdentity
from tests.handoff.helpers import Pair, checkpoints, paired_daemons, wait_state, write_random
from tests.support.waiting import wait_for

STALL = 4.0
LAUNCH_INTERVAL = 3.0
FREE_CAP = DISK_MARGIN + 10 * 1024 * 1024
"""b counts this much free space: 10 MiB above the margin (two 6 MiB offers do not both fit)."""
SIX_MIB = 6 * 1024 * 1024


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    """a sends; b has short deadlines and a small counted disk."""
    env_b = {
        "HANDOFF_STALL_TIMEOUT": str(STALL),
        "HANDOFF_RECEIVER_RESUMED_WAIT": "3",
        "HANDOFF_WARM_IDLE": "2",
        "HANDOFF_LAUNCH_INTERVAL": str(LAUNCH_INTERVAL),
        "HANDOFF_DISK_FREE_CAP": str(FREE_CAP),
    }
    with paired_daemons(env_b=env_b) as p:
        yield p


async def _wait_in(client: Any, handoff_id: str, states: set[str], within: float = 90) -> Any:
    """Like wait_state, for a handoff the receiver may not know yet."""

    async def probe() -> Any:
        try:
            h = await client.request("GET", f"/v1/handoffs/{handoff_id}")
        except ApiError as exc:
            if exc.code == "handoff-not-found":
                return None
            raise
        return h if h["state"] in states else None

    return await wait_for(probe, within=within, what=f"{handoff_id} in {states}")


def _b_port(pair: Pair) -> int:
    """b's LAN signaling port (ephemeral), from its log."""
    ports = re.findall(r'signaling listener started" signaling_port=(\d+)', pair.b.log.read_text())
    assert ports, "b logged no signaling port"
    return int(ports[-1])


# ---------------------------------------------------------------- finding 11 (runs first: it
# counts b's closed links, and no other link exists yet)


@pytest.mark.asyncio
async def test_receiver_link_closes_while_resumed_is_pending_and_a_later_confirm_arrives(
    pair: Pair,
) -> None:
    assert "idle link closed" not in pair.b.log.read_text()
    async with pair.client(pair.a) as a, pair.client(pair.b) as b:
        session = await a.publish(
            "org.example.unconfirmed", "pending", items=[Item.of_text("message", "m.txt", "x")]
        )
        h = await a.send(session.id, "desk")
        await _wait_in(b, h.id, {"delivered"})
        # The app never confirms: b's exchange gives up waiting and its idle link closes.
        await wait_for(
            lambda: _log_has(pair, "idle link closed"), within=60, what="b's link closed"
        )
        mine = await a.handoff(h.id)
        assert mine.state == "delivered"
        # A later confirm still reaches the source, by notice (no open exchange is left).
        await b.confirm_resumed(h.id)
        done = await wait_state(a, h.id, {"resumed"}, within=60)
        assert done["state"] == "resumed"
        assert "source told over the open channel" not in pair.b.log.read_text()


async def _log_has(pair: Pair, text: str) -> bool | None:
    return True if text in await asyncio.to_thread(pair.b.log.read_text) else None


# ---------------------------------------------------------------- finding 5


LAUNCHED_APP = """
import os, sys, time
log = sys.argv[1]
with open(log, "a") as f:
    f.write(f"start {time.time()} {os.environ['HANDOFF_ID']}\\n")
time.sleep(1.5)
with open(log, "a") as f:
    f.write(f"end {time.time()}\\n")
"""


@pytest.mark.asyncio
async def test_a_handoff_flood_launches_the_app_one_at_a_time_and_rate_limited(
    pair: Pair,
) -> None:
    app = pair.root / "flood_app.py"
    app.write_text(LAUNCHED_APP)
    launches = pair.root / "launches.log"
    app_id = "org.example.flooded"
    async with pair.client(pair.a) as a, pair.client(pair.b) as b:
        await b.register_app(app_id, [sys.executable, str(app), str(launches)])
        empty = await a.publish(app_id, "nothing", items=[])
        full = await a.publish(app_id, "one", items=[Item.of_text("message", "m.txt", "hi")])
        sessions = [empty.id if i % 3 == 0 else full.id for i in range(30)]
        started = await asyncio.gather(*(a.send(s, "desk") for s in sessions))
        ends = await asyncio.gather(
            *(
                wait_state(a, h.id, {"delivered", "declined", "failed", "cancelled"}, within=180)
                for h in started
            )
        )
        for sid, end in zip(sessions, ends, strict=True):
            if sid == empty.id:
                assert (end["state"], end["error"]["code"]) == ("declined", "no-items"), end
                assert end["attempts"] == 1  # final: not retried
            else:
                assert end["state"] == "delivered", end
                assert (await b.inbox_entry(end["id"])).state == "received"
        delivered = {e["id"] for e in ends if e["state"] == "delivered"}
        assert len(delivered) == 20

        # Settled: the last launch ended and nothing started for three intervals.
        async def settled() -> list[str] | None:
            lines = launches.read_text().splitlines() if launches.exists() else []
            quiet = (
                launches.exists() and time.time() - launches.stat().st_mtime > 3 * LAUNCH_INTERVAL
            )
            return lines if lines and lines[-1].startswith("end") and quiet else None

        lines = await wait_for(settled, within=120, what="the launches to settle")
    starts = [(float(x.split()[1]), x.split()[2]) for x in lines if x.startswith("start")]
    stops = [float(x.split()[1]) for x in lines if x.startswith("end")]
    assert 1 <= len(starts) == len(stops) < 20, lines
    for i, ((began, hid), (next_began, _)) in enumerate(itertools.pairwise(starts)):
        assert hid in delivered
        assert stops[i] <= next_began, lines  # one live launch at a time
        assert next_began - began >= LAUNCH_INTERVAL / 2, lines  # rate-limited (startup jitter)
    assert starts[-1][1] in delivered


# ---------------------------------------------------------------- finding 10


def _identity_of_a(pair: Pair) -> LocalIdentity:
    """Device a's identity, read from its home (to speak for it from the test process)."""
    from handoffd import identity
    from handoffd.paths import Paths

    paths = Paths.resolve(pair.a.home)
    key = identity.load_private_key(paths.device_key)
    cert = identity.load_cert(paths.device_cert.read_bytes())
    trust = identity.TrustAnchor.from_ca(identity.load_cert(paths.account_ca.read_bytes()), None)
    return LocalIdentity(key=key, cert_der=identity.cert_to_der(cert), trust=trust)


async def _stalled_sender(
    pair: Pair, payload: bytes, feed_upto: int, holder: dict[str, Any]
) -> str:
    """Offer ``payload`` to b as device a, send its first ``feed_upto`` bytes, then only answer
    pings; the code the exchange ended with."""
    from handoffd import identity
    from handoffd.handoff.link import make_hello
    from handoffd.handoff.offer import build_manifest, new_handoff_id, sign_offer
    from handoffd.items import Item
    from handoffd.proto import codec
    from handoffd.proto import transfer as core
    from handoffd.transport.signaling import send_offer

    local = await asyncio.to_thread(_identity_of_a, pair)  # file reads: off the loop
    trust = local.trust
    assert isinstance(trust, identity.TrustAnchor)

    async def signal(offer: bytes) -> bytes:
        return await send_offer(
            "127.0.0.1", _b_port(pair), offer, local=local, peer_device_id=pair.b_id, timeout=10
        )

    loop = asyncio.get_running_loop()
    channel = await webrtc.connect(
        local=local, peer_device_id=pair.b_id, signal=signal, deadline=loop.time() + 30
    )
    try:
        manifest, _ = build_manifest(
            handoff_id=new_handoff_id(),
            session_id=new_handoff_id(),
            app_id="org.example.stalled",
            title="stalled",
            context={},
            items=[Item.of_data("document", "big.bin", payload)],
            sender=pair.a_id,
            recipient=pair.b_id,
            now=time.time(),
        )
        holder["id"] = manifest.handoff_id
        c = core.SenderCore(
            make_hello(pair.a_id, trust),
            sign_offer(local.key, local.cert_der, manifest),
            manifest,
            now=loop.time(),
        )
        c.start(loop.time())
        while True:
            for ev in c.events():
                if isinstance(ev, core.Accepted):
                    holder["accepted"] = True
                elif isinstance(ev, core.NeedData) and ev.offset + ev.length <= feed_upto:
                    chunk = payload[ev.offset : ev.offset + ev.length]
                    c.data_ready(ev.index, ev.offset, chunk, loop.time())
                    holder["sent"] = ev.offset + ev.length
                elif isinstance(ev, core.Failed | core.Declined):
                    return str(getattr(ev, "code", None) or getattr(ev, "reason", ""))
            for msg in c.outgoing():
                await channel.send(codec.encode(msg))
            timer = c.next_timer()
            try:
                async with asyncio.timeout(max(0.0, (timer or loop.time() + 5) - loop.time())):
                    data = await channel.recv()
            except TimeoutError:
                c.timer(loop.time())
                continue
            c.receive_bytes(data, loop.time())
    finally:
        await channel.close()


@pytest.mark.asyncio
@pytest.mark.timeout(300)  # two handoffs to real daemons, then a stalled sender is waited out
async def test_disk_is_reserved_across_handoffs_and_a_stalled_sender_is_cut_off(
    pair: Pair,
) -> None:
    payload = os.urandom(SIX_MIB)
    one_mib = 1024 * 1024
    holder: dict[str, Any] = {}
    stalled = asyncio.create_task(_stalled_sender(pair, payload, one_mib, holder))
    doc = pair.root / "six.bin"
    write_random(doc, SIX_MIB)
    try:
        async with pair.client(pair.a) as a, pair.client(pair.b) as b:
            await wait_for(
                lambda: asyncio.sleep(0, True if holder.get("accepted") else None),
                within=60,
                what="the stalled offer to be accepted",
            )
            # While the stalled exchange holds its reservation, a second 60 % offer does not fit.
            session = await a.publish(
                "org.example.big", "six", items=[Item.of_path("document", "six.bin", doc)]
            )
            second = await a.send(session.id, "desk")
            end = await wait_state(a, second.id, {"delivered", "declined", "failed"}, within=120)
            assert (end["state"], end["error"]["code"]) == ("declined", "no-disk-space"), end
            assert not stalled.done()

            # The stalled sender is cut off: a retryable error, what it sent kept for a resume.
            code = await asyncio.wait_for(stalled, 60)
            assert code == "stalled"
            hid = holder["id"]
            mine = await _wait_in(b, hid, {"retrying"}, within=30)
            assert mine["error"]["code"] == "stalled"
            assert 0 < holder["sent"] <= one_mib
            assert checkpoints(pair.b, hid) == {0: holder["sent"]}
            assert (pair.b.paths.partial / hid / "0").stat().st_size == holder["sent"]

            # Its reservation was released: the same offer fits now.
            third = await a.send(session.id, "desk")
            end = await wait_state(a, third.id, {"delivered", "declined", "failed"}, within=120)
            assert end["state"] == "delivered", end
    finally:
        stalled.cancel()
        with contextlib.suppress(BaseException):
            await stalled


# ---------------------------------------------------------------- finding 13


@pytest.mark.asyncio
async def test_garbage_from_strangers_is_coalesced_in_status_and_throttled_in_events(
    pair: Pair,
) -> None:
    from handoffd.errors import HandoffError
    from handoffd.transport.signaling import send_offer

    # Since signaling v2 a stranger without the account's CA key is refused at the hello and
    # never reaches the offer handler; garbage offers after a valid hello (a device of the
    # account) are what can still fill status.refused.
    local = await asyncio.to_thread(_identity_of_a, pair)  # file reads: off the loop
    flood = 200
    events: list[dict[str, Any]] = []
    async with pair.client(pair.b) as b, pair.client(pair.b) as watcher:
        subscribed, marker_seen = asyncio.Event(), asyncio.Event()

        async def watch() -> None:
            async for ev in watcher.events(heartbeats=True):
                subscribed.set()
                if ev.get("type") == "handoff.refused":
                    events.append(ev)
                elif ev.get("type") == "session.published":
                    marker_seen.set()

        watching = asyncio.create_task(watch())
        try:
            await asyncio.wait_for(subscribed.wait(), 30)
            for i in range(flood):
                with contextlib.suppress(HandoffError, OSError, TimeoutError):
                    await send_offer(
                        "127.0.0.1",
                        _b_port(pair),
                        b"garbage %d" % i,
                        local=local,
                        peer_device_id=pair.b_id,
                        timeout=10,
                    )
            status = await b.request("GET", "/v1/status")
            refused = status["refused"]
            assert len(refused) <= 32
            signaling = [r for r in refused if r["path"] == "signaling"]
            assert sum(r["count"] for r in signaling) >= flood
            # A marker published after the flood: the stream is in order, so once it arrives
            # every refusal event published before it has been delivered.
            await b.publish(
                "org.example.marker", "marker", items=[Item.of_data("document", "m.txt", b"m")]
            )
            await asyncio.wait_for(marker_seen.wait(), 30)
        finally:
            watching.cancel()
            with contextlib.suppress(BaseException):
                await watching
    assert 1 <= len(events) <= 16, len(events)
    assert sum(e["count"] for e in events) <= flood
