"""The lab fault suite, part 2: through the server (relay, multicast blocked, another subnet,
the relay restarted, an intruder) and the warm-link, decline and crash cases (the world and
its layout: tests/handoff/faults/world.py)."""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import sys
from pathlib import Path

import pytest

from tests.handoff.faults.world import (
    ENDED,
    RATE,
    Pocket,
    World,
    acked_bytes,
    device_of,
    extra_daemon,
    finish,
    restart,
    send_session,
    session_state,
    wait_online,
)
from tests.handoff.helpers import wait_state
from tests.handoff.labkit import (
    MiB,
    fill,
    kill_hard,
)
from tests.server.helpers import cli_invite, create_account

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]


# ---------------------------------------------------------------- 7.-11. through the server


def _relayed_since(world: World, before: set[Path]) -> bytes:
    """Every byte the server's relay forwarded since ``before`` (the tap's files then)."""
    return b"".join(p.read_bytes() for p in sorted(set(world.tap.iterdir()) - before))


def _samples(path: Path, n: int = 16, size: int = 48) -> list[bytes]:
    """``n`` pieces of ``size`` bytes from random places of a file."""
    data = path.read_bytes()
    rng = random.Random(path.name)
    return [data[o : o + size] for o in (rng.randrange(len(data) - size) for _ in range(n))]


@pytest.mark.slow
@pytest.mark.asyncio
async def test_udp_blocked_between_the_hosts_relay_carries_it_and_never_sees_plaintext(
    world: World,
) -> None:
    # The laptop starts afresh, so this case measures the relay and not the laptop's warm
    # direct links to the desk from earlier cases, which blocking UDP leaves dead.
    await restart(world, "laptop")
    marker = f"marker-{secrets.token_hex(16)}"
    before = set(world.tap.iterdir())
    with world.lab.block_udp(world.host("desk"), world.host("laptop")):  # TCP still goes
        sent = await send_session(
            world,
            "laptop",
            "desk",
            "relayed",
            {"relayed.bin": 8 * MiB},
            texts={"secret.txt": f"the marker is {marker}, keep it"},
        )
        done = await finish(world, sent)
    assert done["path"] == "relay", done
    relayed = await asyncio.to_thread(_relayed_since, world, before)
    # The tap saw the whole session go by (ciphertext is a little larger than plaintext) ...
    assert len(relayed) > sent.total, (len(relayed), sent.total)
    # ... and not one plaintext byte of it: neither the marker nor any piece of the document.
    assert marker.encode() not in relayed
    doc = world.root / "docs" / "relayed-relayed.bin"
    for piece in await asyncio.to_thread(_samples, doc):
        assert piece not in relayed
    print(f"UDP blocked: path {done['path']}, attempts {done['attempts']}, "
          f"relayed {len(relayed)} B for {sent.total} B")  # fmt: skip


@pytest.mark.slow
@pytest.mark.asyncio
async def test_multicast_blocked_target_found_through_the_server(world: World) -> None:
    h4 = world.lab.hosts[4]
    with h4.fault("block_multicast"), extra_daemon(world, "phone", h4) as phone_id:
        # The laptop learns of the phone only from the server's presence.
        seen = await wait_online(world, "laptop", phone_id)
        assert seen["nearby"] is False, seen
        assert not seen["addresses"], seen  # no LAN address: signaling through the server
        sent = await send_session(world, "laptop", "phone", "no-mdns", {"m.bin": 4 * MiB})
        done = await finish(world, sent)
        after = await device_of(world, "laptop", phone_id)
        assert after["nearby"] is False, after  # never seen on the LAN, all along
        assert not after["addresses"], after
    print(f"multicast blocked: path {done['path']}, attempts {done['attempts']}")


@pytest.mark.slow
@pytest.mark.asyncio
async def test_other_subnet_without_udp_route_completes_through_the_server(
    world: World,
) -> None:
    with extra_daemon(world, "remote", world.lab.hosts[5]) as remote_id:
        seen = await wait_online(world, "laptop", remote_id)
        assert seen["nearby"] is False, seen
        assert not seen["addresses"], seen
        sent = await send_session(world, "laptop", "remote", "subnet", {"s.bin": 8 * MiB})
        done = await finish(world, sent)
    assert done["path"] == "relay", done  # no UDP between the subnets: no WebRTC
    print(f"other subnet: path {done['path']}, attempts {done['attempts']}")


@pytest.mark.slow
@pytest.mark.asyncio
async def test_relay_server_restarted_mid_transfer_completes(world: World) -> None:
    desk = world.host("desk")
    with world.lab.block_udp(desk, world.host("laptop")), desk.fault("rate_limit", RATE):
        sent = await send_session(world, "laptop", "desk", "srv-restart", {"x.bin": 32 * MiB})
        acked = await acked_bytes(world, sent, 8 * MiB, path="relay")
        world.server.stop()
        await asyncio.sleep(1)
        await asyncio.to_thread(world.server.start)
        assert await session_state(world, sent) == "active"
        done = await finish(world, sent, within=300)
    assert done["path"] == "relay", done
    assert done["attempts"] >= 2, done
    # The new relay session resumed from what the desk held.
    assert done["wire"]["bytes_already_held"] >= acked, done
    print(f"server restart: acked {acked} B, attempts {done['attempts']}, final {done['wire']}")


@pytest.mark.asyncio
async def test_device_of_another_account_cannot_join_a_relay_session(world: World) -> None:
    """A device of another account, given a live relay session of ours to the desk (the ticket
    itself, or just its session id), cannot join it; nor can it open a relay to the desk."""
    create_account(world.server.data, "other")
    own, _ = cli_invite(world.server.data, "lab")
    other, _ = cli_invite(world.server.data, "other")
    async with world.client("desk") as d:
        handoffs_before = {h.id for h in await d.handoffs()}
        inbox_before = {e.id for e in await d.inbox()}
        argv = [sys.executable, "-m", "tests.handoff.rogues", "relay-rogue",
                "--server", world.server.url, "--fingerprint", world.server.fingerprint or "",
                "--own", own, "--other", other, "--to", world.ids["desk"]]  # fmt: skip
        proc = await world.lab.hosts[4].spawn(
            argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()
        results = json.loads(out.decode().strip().splitlines()[-1])
        print(f"relay intruder: {results}")
        assert results == {
            "own-open": "opened",  # the session exists: the desk was offered it
            "stolen-ticket": "relay-forbidden",
            "made-up-token": "relay-forbidden",
            "other-open": "target-unavailable",
        }
        assert {h.id for h in await d.handoffs()} == handoffs_before
        assert {e.id for e in await d.inbox()} == inbox_before
    # The relay still serves the account: a relayed handoff right after, intact.
    with world.lab.block_udp(world.host("desk"), world.host("laptop")):
        sent = await send_session(world, "laptop", "desk", "after-intruder", {"a.bin": MiB})
        done = await finish(world, sent)
    assert done["path"] == "relay", done


@pytest.mark.asyncio
async def test_handoffs_started_together_while_one_warm_link_is_idle_do_not_break_each_other(
    world: World,
) -> None:
    """Several handoffs to one peer start at once while one warm link to it is idle: one of
    them takes the warm link, the others open their own; none fails.

    Fails now: two of them take the same warm link (``_link_to`` returns it, then awaits
    ``_set`` before ``run_sender`` calls ``link.begin``); the second gets ``link-busy``, counts
    a failed attempt and closes the link, which kills the first one's transfer
    (``connection-lost`` / ``channel-closed``)."""
    await restart(world, "laptop")  # no warm link but the one made below
    first = await send_session(world, "laptop", "desk", "warm", {}, messages=1)
    await finish(world, first)  # the link is idle and warm now
    log_from = len(world.daemons["laptop"].log_text())
    sents = await asyncio.gather(
        *(
            send_session(world, "laptop", "desk", f"race-{i}", {f"r{i}.bin": 2 * MiB})
            for i in range(4)
        )
    )
    results = await asyncio.gather(*(finish(world, s) for s in sents))
    log = world.daemons["laptop"].log_text()[log_from:]
    assert "code=link-busy" not in log, log
    assert [r["attempts"] for r in results] == [1, 1, 1, 1], results


# P2 -------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_warm_link_the_network_killed_is_not_waited_on(world: World) -> None:
    """A warm direct link exists, then UDP between the two hosts is blocked: the next handoff
    goes through the relay at its first attempt, without waiting for the dead link.

    Fails now: the dead warm link is reused; the handoff waits until ICE consent expires or
    the peer is silent for 30 s (``connection-lost``), a failed attempt per dead warm link."""
    await restart(world, "laptop")
    first = await send_session(world, "laptop", "desk", "warm-direct", {}, messages=1)
    done = await finish(world, first)
    assert done["path"] == "direct", done
    with world.lab.block_udp(world.host("desk"), world.host("laptop")):
        sent = await send_session(world, "laptop", "desk", "after-block", {"a.bin": MiB})
        done = await finish(world, sent, within=120)
    assert done["path"] == "relay", done
    assert done["attempts"] == 1, done


# P3 -------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_declined_handoff_leaves_no_partial_data_on_the_target(
    world: World, pocket: Pocket
) -> None:
    """Space runs out mid-transfer; the retry is declined (``no-disk-space``), which is final
    for the source: the target must not keep the partial files of that handoff.

    Fails now: ``partial/<id>`` (and its checkpoints) stay until ``partial_ttl`` (24 h), so the
    space the user frees is still partly taken by a handoff that can never resume."""
    async with world.client("laptop") as a:
        with world.lab.hosts[4].fault("rate_limit", RATE):
            sent = await send_session(world, "laptop", "pocket", "leak", {"l.bin": 24 * MiB})
            await acked_bytes(world, sent, 4 * MiB)
            filler = pocket.disk / "filler"
            await asyncio.to_thread(fill, filler)
            done = await wait_state(a, sent.handoff_id, ENDED, 180)
        filler.unlink()
        assert done["state"] == "declined", done
        assert done["error"]["code"] == "no-disk-space", done
    held = pocket.disk / "partial" / sent.handoff_id
    assert not held.exists(), sorted(p.stat().st_size for p in held.iterdir())


# P4 -------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_source_crashed_after_the_target_committed_reports_every_byte(
    world: World,
) -> None:
    """The source dies after the target committed the handoff but before the target's
    ``delivered`` reached it (the same as a link that dies in that instant). On its next
    attempt the target answers ``delivered`` at once (nothing stored twice): the source must
    then show every byte done, not 0.

    The crash window is made exact by putting the source's record back to what it held in it
    (``transferring``, as a SIGKILL there leaves it) while the source is stopped.

    Fails now: ``delivered`` with ``bytes_done`` 0 (the delivered hook takes ``report.total``,
    which only an ``accepted`` in the same exchange sets), and ``wire`` says nothing was held."""
    import sqlite3

    laptop = world.daemons["laptop"]
    sent = await send_session(world, "laptop", "desk", "dup", {"d.bin": 2 * MiB})
    async with world.client("laptop") as a:
        first = await wait_state(a, sent.handoff_id, ENDED, 120)
    assert first["state"] == "delivered", first
    kill_hard(laptop)
    db = sqlite3.connect(laptop.paths.state_db, timeout=10)
    try:
        with db:
            db.execute(
                "UPDATE handoffs SET state = 'transferring', bytes_done = ? WHERE id = ?",
                (MiB, sent.handoff_id),
            )
    finally:
        db.close()
    laptop.start()  # carries on with the handoff: the desk says delivered at once
    done = await finish(world, sent)
    assert done["attempts"] == 2, done
    assert done["wire"]["data_bytes_sent"] == 0, done
