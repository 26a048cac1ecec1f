"""A handoff to a known device that is offline, with real daemons: queued as
``waiting-for-device`` (``handoff send`` says so and returns), kept across a restart of the
source, cancellable, and sent as soon as the target comes online."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.handoff.helpers import paired_daemons, sha256_file, wait_state, write_random
from tests.support.processes import DaemonProcess
from tests.support.waiting import wait_for


def _offline(a: DaemonProcess, device_id: str) -> bool | None:
    status, body = a.curl("GET", "/v1/devices")
    if status != 200:
        return None
    d = next(x for x in body["devices"] if x["device_id"] == device_id)
    return (not d["nearby"] and not d["online"]) or None


async def _get(a: DaemonProcess, handoff_id: str) -> dict[str, Any]:
    status, body = await asyncio.to_thread(a.curl, "GET", f"/v1/handoffs/{handoff_id}")
    assert status == 200, body
    return dict(body)


@pytest.mark.asyncio
async def test_offline_target_is_queued_survives_a_restart_and_goes_when_it_comes_online() -> None:
    with paired_daemons() as p:
        status, body = p.b.curl(
            "PATCH",
            "/v1/settings",
            {"receive_dir": str(p.root / "received"), "consent_builtin": "accept"},
        )
        assert status == 200, body
        p.b.stop()
        await wait_for(lambda: _offline(p.a, p.b_id), within=120, what="desk offline")

        src = p.root / "for-desk.bin"
        digest = write_random(src, 200 * 1024)
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "handoffd.cli", "--home", str(p.a.home),
             "send", str(src), "--to", "desk"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "desk is offline: queued" in done.stdout, done.stdout
        async with p.client(p.a) as a:
            queued = next(h for h in await a.handoffs() if h.direction == "out")
            h = await _get(p.a, queued.id)
            assert h["state"] == "waiting-for-device", h
            assert h["waiting_until"] > time.time() + 23 * 3600
            assert h["attempts"] == 0
            listing = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "handoffd.cli", "--home", str(p.a.home), "handoffs"],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert "waiting-for-device (waits up to 2" in listing.stdout, listing.stdout

            # Another one, cancelled while it waits.
            other = await a.send_content("desk", text="never mind")
            await wait_state(a, other.id, {"waiting-for-device"}, within=60)
            assert (await a.cancel(other.id)).state == "cancelled"

        p.a.stop()
        p.a.start()
        assert (await _get(p.a, queued.id))["state"] == "waiting-for-device"
        async with p.client(p.a) as a:
            p.b.start()
            final = await wait_state(
                a, queued.id, {"resumed", "failed", "declined", "cancelled"}, within=180
            )
        assert final["state"] == "resumed", final
        assert final["attempts"] >= 1
        assert sha256_file(p.root / "received" / "for-desk.bin") == digest
        assert (await _get(p.a, other.id))["state"] == "cancelled"
