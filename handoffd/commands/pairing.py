"""``handoff pair``, ``unpair``, ``invite`` and ``revoke``: joining and leaving an account.

Destructive commands (``unpair``, ``revoke``) ask first at a terminal and
refuse without one unless ``--yes``; revoking the device in use needs
``--self`` as well (``unpair`` is the way to leave and pair again).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from handoffd.console import clean, grouped_id
from handoffd.errors import HandoffError
from handoffd.subcommands import AddCommand
from handoffd.wire import invite as wire_invite

if TYPE_CHECKING:
    from handoffd.control.client import HandoffClient

__all__ = ["confirm", "register"]


def confirm(question: str, args: argparse.Namespace) -> None:
    """Go on with ``--yes`` or a ``y`` typed at the terminal; else HandoffError(not-confirmed)."""
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise HandoffError(
            f"{question} Not confirmed (no terminal to ask): add --yes", code="not-confirmed"
        )
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        raise HandoffError("not confirmed; nothing was changed", code="not-confirmed")


def _account_text(st: dict[str, Any]) -> str:
    name, account_id = st.get("account_name"), st.get("account_id")
    return f"{clean(name)} ({clean(account_id)})" if name else clean(account_id or "-")


async def cmd_pair(client: HandoffClient, args: argparse.Namespace) -> int:
    """Join an account with a pairing code (CODE@server), an invite link, or '-' (stdin)."""
    text = args.invite
    if text == "-":
        # At a terminal, ask without echo; otherwise read one line (a pipe, a file).
        text = getpass.getpass("invite: ") if sys.stdin.isatty() else sys.stdin.readline()
        text = text.strip()
        if not text:
            raise HandoffError("no invite on stdin", code="invite-missing")
    body: dict[str, Any] = {"invite": text}
    for key in ("server", "fingerprint", "name"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    st = await client.request("POST", "/v1/pair", body)
    print(f"paired: {clean(st.get('device_name'))} is in account {_account_text(st)}")
    return 0


async def cmd_unpair(client: HandoffClient, args: argparse.Namespace) -> int:
    """Leave the account: revoked at the server (when reachable), pairing files forgotten."""
    st = await client.request("GET", "/v1/status")
    if not st.get("paired"):
        raise HandoffError("this device is not paired", code="not-paired")
    confirm(
        f"Unpair this device from account {_account_text(st)}? It is revoked at the server and "
        "can no longer hand off with the account's devices until it pairs again.",
        args,
    )
    done = await client.unpair()
    if done.revoked_at_server:
        print("unpaired: revoked at the server; pair again with `handoff pair CODE`")
    else:
        print(
            "unpaired here, but the server could not be reached: revoke this device from "
            "another device (`handoff revoke`) or the server's web page"
        )
    return 0


async def cmd_invite(client: HandoffClient, args: argparse.Namespace) -> int:
    """Make an invite for a new device of this account; print the whole command to type there."""
    inv = await client.request("POST", "/v1/invites", {})
    url, code, expires_at = str(inv["url"]), str(inv["code"]), float(inv["expires_at"])
    page = inv.get("page_url")  # a phone camera opens the browser pairing page
    parsed = wire_invite.parse_invite(url)
    command = wire_invite.pair_command(parsed.server_url, code, parsed.fingerprint)
    if args.json:
        print(
            json.dumps(
                {"url": url, "code": code, "expires_at": expires_at, "command": command},
                indent=2,
                sort_keys=True,
            )
        )
        return 0
    import segno

    segno.make(page if isinstance(page, str) else url, error="m").terminal(compact=True)
    print(f"pair:    {clean(command)}")
    print(f"code:    {clean(code)}")
    print(f"url:     {clean(url)}")
    if isinstance(page, str):
        print(f"page:    {clean(page)}")
    print(f"expires: {wire_invite.expiry_text(expires_at, time.time())}")
    print("on the new device, run the `pair` line above, or scan the QR code")
    return 0


async def _resolve_device(client: HandoffClient, text: str) -> dict[str, Any]:
    """The device named ``text`` (exact name, else any case) or with that id."""
    devices: list[dict[str, Any]] = (await client.request("GET", "/v1/devices"))["devices"]
    wanted = text.replace("-", "").replace(" ", "").upper()
    by_id = [d for d in devices if d["device_id"] == wanted]
    if by_id:
        return by_id[0]
    exact = [d for d in devices if d["name"] == text]
    matches = exact or [d for d in devices if str(d["name"]).casefold() == text.casefold()]
    if len(matches) > 1:
        raise HandoffError(
            f"several devices are named {clean(text)!r}: use the id (`handoff devices`)",
            code="device-ambiguous",
        )
    if not matches:
        raise HandoffError(f"no device {clean(text)!r} in this account", code="device-unknown")
    return matches[0]


async def cmd_revoke(client: HandoffClient, args: argparse.Namespace) -> int:
    """Revoke a device of the account (asks first; this device only with --self)."""
    d = await _resolve_device(client, args.device)
    shown = f"{clean(d['name'])} ({grouped_id(d['device_id'])})"
    if d.get("self") and not args.self:
        raise HandoffError(
            f"{shown} is this device: revoking it ends its use of the account for good; "
            "add --self to do it, or use `handoff unpair` to leave and pair again",
            code="revoke-self",
        )
    confirm(
        f"Revoke {shown}{' (this device)' if d.get('self') else ''}? It can no longer hand off "
        "with the account's devices; this cannot be undone.",
        args,
    )
    done = await client.request("DELETE", f"/v1/devices/{d['device_id']}")
    print(
        f"revoked {clean(done['device'].get('name') or d['name'])} ({grouped_id(d['device_id'])})"
    )
    return 0


def register(add: AddCommand) -> None:
    """Add ``pair``, ``unpair``, ``invite`` and ``revoke``."""
    p = add("pair", cmd_pair, "join an account with a pairing code or invite link")
    p.add_argument(
        "invite",
        help="the code as shown (K7QF-2M9X-HT4P-9Q2C@host:8443), a handoff://pair link, "
        "or '-' to read it from stdin (keeps it out of the process list and shell history)",
    )
    p.add_argument("--server", help="server URL, for a code typed without its @server")
    p.add_argument("--fingerprint", help="server TLS fingerprint sha256:... (an old-style code)")
    p.add_argument("--name", help="name for this device")
    p = add("unpair", cmd_unpair, "leave the account (then this device can pair again)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    add("invite", cmd_invite, "make an invite for a new device (QR in the terminal)", listing=True)
    p = add("revoke", cmd_revoke, "revoke a device of the account")
    p.add_argument("device", help="device name (any case) or id")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--self", action="store_true", help="allow revoking this device itself")
