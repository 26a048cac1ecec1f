"""Pairing, devices, invites and revocation: two real daemons and a real handoff-server."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable

import pytest

from handoffd.control.client import HandoffClient
from handoffd.errors import ApiError
from tests.server.helpers import cli, cli_invite, create_account
from tests.support.processes import DaemonProcess, ServerProcess

Factory = Callable[..., DaemonProcess]


@pytest.mark.asyncio
async def test_two_daemons_pair_list_revoke(server: ServerProcess, daemons: Factory) -> None:
    create_account(server.data, "ana")
    url, _ = cli_invite(server.data, "ana")
    a, b = daemons("a").start(), daemons("b").start()

    # A joins with the QR URL, through curl.
    status, body = a.curl("POST", "/v1/pair", {"invite": url, "name": "laptop"})
    assert status == 200, body
    assert body["paired"] is True
    assert body["server_url"] == server.url
    a_id, account = body["device_id"], body["account_id"]
    assert a.curl("GET", "/v1/settings")[1]["device_name"] == "laptop"
    status, again = a.curl("POST", "/v1/pair", {"invite": url})
    assert (status, again["error"]["code"]) == (409, "already-paired")

    # A makes an invite; B joins with its short code, through the SDK.
    async with HandoffClient(a.socket) as ca, HandoffClient(b.socket) as cb:
        invite = await ca.create_invite()
        assert invite.url.startswith("handoff://pair?")
        assert invite.qr_svg.lstrip().startswith("<svg")
        b_status = await cb.pair(
            invite.code, server=server.url, fingerprint=server.fingerprint, name="desktop"
        )
        assert b_status.paired
        assert b_status.account_id == account
        b_id = b_status.device_id

        for client, me in ((ca, a_id), (cb, b_id)):
            devices = {d.device_id: d for d in await client.devices()}
            assert set(devices) == {a_id, b_id}
            assert devices[me].self
            assert not devices[{a_id: b_id, b_id: a_id}[me]].self
            assert {d.name for d in devices.values()} == {"laptop", "desktop"}
            assert all(d.nearby is False and d.addresses == () for d in devices.values())

    # Files: key and server pin private, certificates public.
    p = b.paths
    assert stat.S_IMODE(p.device_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(p.server_json.stat().st_mode) == 0o600
    assert stat.S_IMODE(p.device_cert.stat().st_mode) == 0o644
    assert json.loads(p.server_json.read_text()) == {
        "url": server.url,
        "fingerprint": server.fingerprint,
        "account_name": "ana",  # shown by `handoff status`
    }

    # B publishes a session, crashes and comes back: identity and session survive.
    _, session = b.curl("POST", "/v1/sessions", {"app_id": "org.example.chat", "title": "kept"})
    b.kill()
    b.start()
    _, b_after = b.curl("GET", "/v1/status")
    assert (b_after["paired"], b_after["device_id"], b_after["account_id"]) == (True, b_id, account)
    assert b.curl("GET", f"/v1/sessions/{session['id']}")[0] == 200
    status, listing = b.curl("GET", "/v1/devices")
    assert status == 200
    assert listing["source"] == "server"
    assert {d["device_id"] for d in listing["devices"]} == {a_id, b_id}

    # A revokes B: A sees it revoked, and the server refuses B from then on.
    status, revoked = a.curl("DELETE", f"/v1/devices/{b_id}")
    assert status == 200, revoked
    assert revoked["device"]["revoked"] is True
    _, a_devices = a.curl("GET", "/v1/devices")
    assert {d["device_id"]: d["revoked"] for d in a_devices["devices"]} == {a_id: False, b_id: True}
    assert a.curl("GET", "/v1/status")[1]["crl_number"] >= 2

    status, refused = b.curl("POST", "/v1/invites", {})
    assert status == 403
    assert refused["error"]["code"] == "device-revoked"
    status, cached = b.curl("GET", "/v1/devices")  # the server refuses: the cache answers
    assert status == 200
    assert cached["source"] == "cache"
    assert cached["server_error"] == "device-revoked"
    server_view = json.loads(cli(server.data, "devices", "ana", "--json").stdout)
    assert {d["device_id"]: d["revoked"] for d in server_view["devices"]} == {
        a_id: False,
        b_id: True,
    }


@pytest.mark.asyncio
async def test_pair_errors_are_json(server: ServerProcess, daemons: Factory) -> None:
    create_account(server.data, "bo")
    url, code = cli_invite(server.data, "bo")
    d = daemons("c").start()
    async with HandoffClient(d.socket) as client:
        with pytest.raises(ApiError) as info:
            await client.pair(code)  # a short code needs the server URL
        assert info.value.code == "invite-malformed"
        bad_pin = "sha256:" + "0" * 64
        with pytest.raises(ApiError) as info:
            await client.pair(url.replace(server.fingerprint or "", bad_pin))
        assert info.value.code == "server-fingerprint-mismatch"
        assert not (await client.status()).paired
        # The invite was not spent by the refused attempt: it still works.
        assert (await client.pair(url)).paired
