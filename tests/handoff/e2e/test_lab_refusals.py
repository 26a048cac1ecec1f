"""End to end in the lab, part 2: declines and refusals (another account, revoked, expired,
tampered, replayed and misaddressed signaling) (the world: tests/handoff/e2e/world.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from handoffd.control.client import Item
from handoffd.errors import ApiError
from tests.handoff.e2e.world import (
    SMALL_WIRE,
    World,
    get_handoff,
    messages,
)
from tests.handoff.helpers import (
    wait_state,
)
from tests.handoff.labkit import (
    LabDaemon,
    WireMeter,
    pair_daemon,
    stop_quietly,
    write_expired_cert,
)
from tests.server.helpers import create_account
from tests.support.waiting import wait_for

pytestmark = pytest.mark.lab


# ---------------------------------------------------------------- 3. declines and refusals


@pytest.mark.asyncio
async def test_declined_cleanly_when_handoff_is_disabled_on_the_target(world: World) -> None:
    h0, _, _ = world.hosts
    one_m, _ = world.docs["one-m.bin"]
    async with world.client(world.a) as a, world.client(world.b) as b:
        session = await a.publish(
            "org.example.x", "nope", items=[*messages(3), Item.of_path("document", "d", one_m)]
        )
        await b.update_settings(handoff_enabled=False)
        try:
            meter = WireMeter(h0).start()
            h = await a.send(session.id, "desk")
            done = await wait_state(a, h.id, {"declined", "failed", "delivered", "resumed"})
            a_tx = meter.read()[1]
        finally:
            await b.update_settings(handoff_enabled=True)
        assert done["state"] == "declined"
        assert done["error"]["code"] == "handoff-disabled"
        assert done["attempts"] == 1  # a decline is final: no retries
        assert done["wire"]["data_bytes_sent"] == 0
        assert a_tx < SMALL_WIRE, a_tx
        assert (await a.session(session.id)).state == "active"  # the source keeps it
        theirs = await b.handoff(h.id)
        assert (theirs.direction, theirs.state) == ("in", "declined")
        assert theirs.error is not None
        assert theirs.error["code"] == "handoff-disabled"
        with pytest.raises(ApiError) as err:
            await b.inbox_entry(h.id)
        assert err.value.code == "inbox-not-found"
        assert not (world.b.paths.partial / h.id).exists()


@asynccontextmanager
async def _rogue_device(
    world: World, name: str, account: str, *, start: bool = True
) -> AsyncIterator[tuple[LabDaemon, str]]:
    """A daemon in h2 paired to ``account``, told where the desk's signaling port is."""
    d = world.daemon(name, world.hosts[2])
    try:
        d.start()
        device_id = pair_daemon(world.server, d, account, name)
        async with world.client(d) as c:
            await c.update_settings(unicast_peers=[world.b_signaling])
        yield d, device_id
    finally:
        stop_quietly(d)


async def _refused(
    world: World, sender: LabDaemon, target: str, peer_code: str, message: str
) -> dict[str, Any]:
    """``sender`` hands a session with a 1 MiB document to ``target``; the desk refuses it at
    the door. Checks that the refusal is visible on the source, logged with its code on the
    target, and that no session data crossed; returns the source's handoff."""
    _, _, h2 = world.hosts
    one_m, _ = world.docs["one-m.bin"]
    async with world.client(sender) as s, world.client(world.b) as b:
        before = {h.id for h in await b.handoffs()}
        inbox_before = {e.id for e in await b.inbox()}
        log_before = len(world.b.log_text())
        session = await s.publish(
            "org.example.x", "refused", items=[*messages(3), Item.of_path("document", "d", one_m)]
        )  # fmt: skip
        meter = WireMeter(h2).start()
        started = time.time()
        h = await s.send(session.id, target)

        async def refused() -> dict[str, Any] | None:
            x = await get_handoff(s, h.id)
            return x if x["error"] is not None else None

        seen: dict[str, Any] = await wait_for(refused, within=60, what="the refusal on the source")
        h2_tx = meter.read()[1]
        # An authentication refusal is final at once: retrying could only repeat it.
        assert seen["state"] == "failed", seen
        assert seen["attempts"] == 1, seen
        assert seen["error"]["code"] == "peer-refused", seen
        assert seen["error"]["reason"] == peer_code, seen
        assert message in seen["error"]["message"], seen
        assert seen["bytes_done"] == 0
        assert seen["wire"]["data_bytes_sent"] == 0
        assert (await s.session(session.id)).state == "active"
        # The target refused before anything of the session existed there.
        assert {h.id for h in await b.handoffs()} == before
        with pytest.raises(ApiError) as err:
            await b.handoff(h.id)
        assert err.value.code == "handoff-not-found"
        assert {e.id for e in await b.inbox()} == inbox_before
        assert not (world.b.paths.partial / h.id).exists()
        # The target's record of it: its status lists the refusal, and a log line has the code.
        assert f"offer refused: {peer_code}" in world.b.log_text()[log_before:]
        refusals = (await b.status()).raw["refused"]
        assert any(r["code"] == peer_code and r["at"] >= started for r in refusals), refusals
        # Nothing like the 1 MiB document left the refused device's host.
        assert h2_tx < SMALL_WIRE, h2_tx
        print(f"refused {peer_code}: {seen['state']} {seen['error']}; refused host tx {h2_tx} B")
        return seen


@pytest.mark.asyncio
async def test_refused_device_of_another_account(world: World) -> None:
    """Mallory (another account) dials the desk's signaling port by device id. Its hello is
    not the desk's account's: the desk proves nothing and never reads an offer, so mallory
    learns nothing of the desk and the desk nothing of mallory. Mallory cannot authenticate
    that refusal, so for it the attempt failed transiently (retrying); no session byte moves."""
    create_account(world.server.data, "other")
    async with (
        _rogue_device(world, "mallory", "other") as (mallory, _),
        world.client(mallory) as s,
        world.client(world.b) as b,
    ):
        before = {h.id for h in await b.handoffs()}
        log_before = len(world.b.log_text())
        session = await s.publish("org.example.x", "refused", items=messages(3))
        h = await s.send(session.id, world.b_id)

        async def failed_once() -> dict[str, Any] | None:
            x = await get_handoff(s, h.id)
            return x if x["error"] is not None else None

        seen = await wait_for(failed_once, within=60, what="the failed attempt on mallory")
        assert seen["state"] == "retrying", seen
        assert seen["bytes_done"] == 0
        assert "reason" not in seen["error"], seen  # nothing the desk said is believed

        async def logged() -> bool | None:
            text = world.b.log_text()[log_before:]
            return True if 'event="signaling hello refused" code=hello-refused' in text else None

        await wait_for(logged, within=30, what="the desk's log of the refused hello")
        assert "offer refused" not in world.b.log_text()[log_before:]
        assert {x.id for x in await b.handoffs()} == before
        await s.cancel(h.id)


@pytest.mark.asyncio
async def test_refused_revoked_device(world: World) -> None:
    async with _rogue_device(world, "lost", "lab") as (lost, lost_id):
        # Revoked while away, and the server out of its reach when it comes back: it does not
        # know (told by the server, it refuses to send at once: tests/cli/test_revocation.py),
        # so the desk must refuse it.
        lost.stop()
        async with world.client(world.b) as b:
            await b.revoke(lost_id)  # the desk revokes it: the desk holds the new CRL at once
            assert any(d.device_id == lost_id and d.revoked for d in await b.devices())
        world.server.stop()
        try:
            lost.start()
            await _refused(world, lost, world.b_id, "cert-revoked", "revoked")
        finally:
            stop_quietly(lost)
            if not world.server.running():
                world.server.start()


@pytest.mark.asyncio
async def test_refused_expired_device_certificate(world: World) -> None:
    async with _rogue_device(world, "old", "lab") as (old, _):
        old.stop()
        # Expired while the server is out of reach (otherwise the daemon renews it at start).
        world.server.stop()
        try:
            not_after = write_expired_cert(world.server.data, world.account_id, old.home)
            assert not_after < dt.datetime.now(dt.UTC)
            old.start()
            await _refused(world, old, world.b_id, "cert-expired", "expired")
            assert "certificate renewed" not in old.log_text()
        finally:
            stop_quietly(old)
            if not world.server.running():
                world.server.start()


@pytest.mark.asyncio
async def test_refused_tampered_replayed_and_misaddressed_signaling_envelopes(
    world: World,
) -> None:
    """A rogue process in h2 with the laptop's identity talks straight to the desk's signaling
    port: a genuine offer connects; the same bytes again, an offer whose SDP fingerprint was
    changed (with and without re-signing) and one addressed to another device are refused."""
    _, _, h2 = world.hosts
    async with world.client(world.b) as b:
        before = {h.id for h in await b.handoffs()}
        inbox_before = {e.id for e in await b.inbox()}
        log_before = len(world.b.log_text())
        started = time.time()
        argv = [sys.executable, "-m", "tests.handoff.rogues", "rogue", "--home", str(world.a.home),
                "--to", world.b_id, "--at", world.b_signaling]  # fmt: skip
        proc = await h2.spawn(
            argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()
        results = json.loads(out.decode().strip().splitlines()[-1])
        assert results == {
            "genuine": "connected",  # the same identity and path do work ...
            "replayed": "envelope-replayed",
            "tampered-fingerprint": "envelope-bad-signature",
            "resigned-fingerprint-mismatch": "sdp-fingerprint-mismatch",
            "wrong-recipient": "envelope-wrong-recipient",
        }
        log = world.b.log_text()[log_before:]
        for code in list(results.values())[1:]:
            assert f"offer refused: {code}" in log
        # Each refusal is visible in the desk's API too, with its reason.
        refused = [r for r in (await b.status()).raw["refused"] if r["at"] >= started]
        assert sorted(r["code"] for r in refused) == sorted(list(results.values())[1:]), refused
        assert {r["path"] for r in refused} == {"signaling"}
        assert {h.id for h in await b.handoffs()} == before
        assert {e.id for e in await b.inbox()} == inbox_before
