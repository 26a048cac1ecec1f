"""Consent on the receiver with real daemons and a real D-Bus session bus: the desk asks its
person through a desktop notification (a stand-in ``org.freedesktop.Notifications`` on a
``dbus-daemon --session`` this module starts), before any byte of the session moves."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.handoff.helpers import Pair, paired_daemons, sha256_file, wait_state, write_random
from tests.server.helpers import cli_invite
from tests.support.notifyserver import SessionBus, Shown
from tests.support.processes import DaemonProcess
from tests.support.waiting import wait_for

FINAL = {"resumed", "declined", "failed", "cancelled"}


@dataclass
class World:
    """The paired daemons and the desk's session bus."""

    pair: Pair
    bus: SessionBus


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    """Laptop (a) and desk (b), both on the test's session bus with the stand-in notification
    server."""
    root = Path(tempfile.mkdtemp(prefix="hb", dir="/tmp"))
    bus = SessionBus(root).start()
    try:
        with paired_daemons(
            env_a={"DBUS_SESSION_BUS_ADDRESS": bus.address},
            env_b={"DBUS_SESSION_BUS_ADDRESS": bus.address},
        ) as p:
            status, body = p.b.curl(
                "PATCH", "/v1/settings", {"receive_dir": str(p.root / "received")}
            )
            assert status == 200, body
            yield World(p, bus)
    finally:
        bus.stop()


async def _question(bus: SessionBus, title: str) -> Shown:
    def find() -> Shown | None:
        return next((s for s in bus.shown() if "Accept" in s.actions and title in s.body), None)

    return await wait_for(find, within=120, what=f"the question about {title}")


async def _shown(bus: SessionBus, summary: str) -> Shown:
    def find() -> Shown | None:
        return next((s for s in reversed(bus.shown()) if s.summary == summary), None)

    return await wait_for(find, within=60, what=f"the notification {summary!r}")


def _file(w: World, name: str, size: int) -> tuple[Path, str]:
    path = w.pair.root / name
    return path, write_random(path, size)


@pytest.mark.asyncio
async def test_decline_on_the_notification_declines_on_the_source_before_any_byte(
    world: World,
) -> None:
    p = world.pair
    src, _ = _file(world, "declined.bin", 256 * 1024)
    async with p.client(p.a) as a, p.client(p.b) as b:
        h = await a.send_content("desk", paths=[str(src)])
        shown = await _question(world.bus, "declined.bin")
        assert shown.summary == "laptop wants to hand you files"
        assert shown.body == "“declined.bin” — files (handoff.files), 1 item, 256.0 KiB"
        assert shown.app_name == "Handoff"
        asking = (await b.request("GET", "/v1/asking"))["asking"]
        assert [x["id"] for x in asking] == [h.id]
        assert asking[0]["from"]["name"] == "laptop"
        typed = await b.asking()  # the SDK decodes the same answer into the Asking model
        assert [(x.id, x.sender.name, x.state) for x in typed] == [(h.id, "laptop", "asking")]
        assert typed[0].raw == asking[0]
        world.bus.press(shown, "Decline")
        done = await wait_state(a, h.id, FINAL, within=120)
        assert done["state"] == "declined", done
        assert done["error"]["code"] == "declined-by-user"
        assert done["error"]["message"] == "declined on desk"
        assert done["wire"]["data_bytes_sent"] == 0
        assert done["bytes_done"] == 0
        incoming = await b.handoff(h.id)
        assert incoming.state == "declined"
        assert incoming.bytes_done == 0
    assert not (p.b.paths.partial / h.id).exists()
    assert not (p.b.paths.inbox / h.id).exists()
    assert not (p.root / "received" / "declined.bin").exists()
    told = await _shown(world.bus, "Handoff declined")
    assert told.body == "to desk: declined on desk"


@pytest.mark.asyncio
async def test_accept_on_the_notification_completes_and_a_notification_says_so(
    world: World,
) -> None:
    p = world.pair
    src, digest = _file(world, "accepted.bin", 300 * 1024)
    async with p.client(p.a) as a:
        h = await a.send_content("desk", paths=[str(src)])
        shown = await _question(world.bus, "accepted.bin")
        world.bus.press(shown, "Accept")
        done = await wait_state(a, h.id, FINAL, within=120)
        assert done["state"] == "resumed", done
    assert sha256_file(p.root / "received" / "accepted.bin") == digest

    def received() -> Shown | None:
        return next(
            (
                s
                for s in world.bus.shown()
                if s.summary == "Received from laptop" and "accepted.bin" in s.body
            ),
            None,
        )

    note = await wait_for(received, within=60, what="the received notification")
    assert note.body == "“accepted.bin” (files)"
    assert (await _shown(world.bus, "Handoff resumed")).body == "resumed on desk"


@pytest.mark.asyncio
async def test_accept_from_the_cli(world: World) -> None:
    p = world.pair
    async with p.client(p.a) as a, p.client(p.b) as b:
        h = await a.send_content("desk", url="https://example.org/cli-accept")

        async def waiting() -> bool | None:
            return (
                any(x["id"] == h.id for x in (await b.request("GET", "/v1/asking"))["asking"])
                or None
            )

        await wait_for(waiting, within=120, what="the question")
        listing = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "handoffd.cli", "--home", str(p.b.home), "inbox"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert h.id in listing.stdout, listing.stdout
        assert "asking" in listing.stdout
        # No browser opener here: the URL stays in the desk's inbox once accepted.
        await b.update_settings(open_urls=False)
        try:
            done = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "handoffd.cli", "--home", str(p.b.home), "accept", h.id],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert "accepted" in done.stdout
            delivered = await wait_state(a, h.id, {"delivered", *FINAL}, within=120)
            assert delivered["state"] == "delivered", delivered
        finally:
            await b.update_settings(open_urls=True)
        entry = await b.inbox_entry(h.id)
        assert entry.state == "received"
        discard = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "handoffd.cli", "--home", str(p.b.home), "inbox", "discard", h.id],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert discard.returncode == 0, discard.stderr
        assert h.id not in [e.id for e in await b.inbox()]
        assert not (p.b.paths.inbox / h.id).exists()


@pytest.mark.asyncio
async def test_no_answer_declines_after_the_timeout(world: World) -> None:
    p = world.pair
    async with p.client(p.a) as a, p.client(p.b) as b:
        await b.update_settings(consent_timeout=3)
        try:
            h = await a.send_content("desk", text="nobody is there")
            done = await wait_state(a, h.id, FINAL, within=120)
        finally:
            await b.update_settings(consent_timeout=120)
        assert done["state"] == "declined", done
        assert done["error"]["code"] == "consent-timeout"
        assert done["error"]["message"] == "nobody answered on desk within 3 s"
        assert done["wire"]["data_bytes_sent"] == 0
        assert (await b.request("GET", "/v1/asking"))["asking"] == []


@pytest.mark.asyncio
async def test_a_device_rule_declines_without_asking(world: World) -> None:
    p = world.pair
    async with p.client(p.a) as a, p.client(p.b) as b:
        before = len(world.bus.shown())
        await b.update_settings(consent_devices=["laptop=decline"])
        try:
            h = await a.send_content("desk", text="not from you")
            done = await wait_state(a, h.id, FINAL, within=120)
        finally:
            await b.update_settings(consent_devices=[])
        assert done["state"] == "declined", done
        assert done["error"]["code"] == "declined-by-policy"
        assert not any("not from you" in s.body for s in world.bus.shown()[before:])


@pytest.mark.asyncio
async def test_notifications_off_shows_none(world: World) -> None:
    p = world.pair
    async with p.client(p.a) as a, p.client(p.b) as b:
        await b.update_settings(notifications=False, consent_builtin="accept")
        try:
            url = "https://example.org/quiet"
            await b.update_settings(open_urls=False)
            h = await a.send_content("desk", url=url)
            await wait_state(a, h.id, {"delivered", *FINAL}, within=120)
            await b.inbox_entry(h.id)  # it arrived
        finally:
            await b.update_settings(notifications=True, consent_builtin="ask", open_urls=True)
        assert not any(url in s.body or "quiet" in s.body for s in world.bus.shown())


@pytest.mark.asyncio
async def test_a_device_paired_into_the_account_is_announced(world: World) -> None:
    """The account's devices tell their person when a new device joins (pairing happens at the
    server; a person who did not pair it revokes it)."""
    p = world.pair
    phone = DaemonProcess(p.root / "c")
    phone.home.mkdir(mode=0o700)
    phone.start()
    try:
        url, _ = cli_invite(p.server.data, "ana")
        status, body = phone.curl("POST", "/v1/pair", {"invite": url, "name": "phone"})
        assert status == 200, body

        def announced() -> Shown | None:
            return next(
                (
                    s
                    for s in world.bus.shown()
                    if s.summary == "New device in your account" and s.body.startswith("phone ")
                ),
                None,
            )

        shown = await wait_for(announced, within=60, what="the new device's notification")
        assert shown.body == "phone (linux) was paired. Not you? Revoke it: handoff revoke 'phone'"
    finally:
        phone.kill()
