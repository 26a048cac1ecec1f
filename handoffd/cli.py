"""``handoff``: the command line, a thin client of the daemon's control API.

Exit status 0 on success; 1 with one line on stderr on any error; 2 for a
usage error. Every listing takes ``--json``. Text that comes from other
devices (names, titles) is stripped of control characters before printing.

Subcommands are added with ``add_command``; a module listed in
``COMMAND_MODULES`` brings its own by defining ``register(add: AddCommand)``.
A command's function is ``async f(client, args) -> int`` when it talks to the
daemon, ``f(args) -> int`` when it does not (``daemon=False``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import importlib
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from handoffd import __version__, identity
from handoffd.console import clean, follow, human_size, state_text, table
from handoffd.control.client import HandoffClient
from handoffd.errors import HandoffError
from handoffd.subcommands import Command, LocalCommand

# Modules that add subcommands: each defines ``register(add: AddCommand) -> None``.
# ``demo`` registers itself this way so that nothing imports it (it uses ``console``).
BUILTIN_COMMAND_MODULES: tuple[str, ...] = ("handoffd.demo",)
COMMAND_MODULES: tuple[str, ...] = ()


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    seconds = max(0, int(time.time() - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


# ---------------------------------------------------------------- commands


async def cmd_status(client: HandoffClient, args: argparse.Namespace) -> int:
    """Device, account, pairing and server state."""
    st = await client.status()
    if args.json:
        _print_json(dict(st.raw))
        return 0
    rows = [
        ("device", f"{clean(st.device_name)} ({identity.format_device_id(st.device_id)})"),
        ("paired", "yes" if st.paired else "no (run `handoff pair <invite>`)"),
        ("account", st.account_id or "-"),
        ("server", st.server_url or "-"),
        ("server reachable", {True: "yes", False: "no", None: "-"}[st.server_reachable]),
        ("handoff enabled", "yes" if st.handoff_enabled else "no"),
        ("revoked", "YES" if st.revoked else "no"),
        ("version", st.version),
    ]
    print(table(rows, ("", "")).split("\n", 1)[1])
    return 0


async def cmd_devices(client: HandoffClient, args: argparse.Namespace) -> int:
    """The account's devices."""
    devices = await client.devices()
    if args.json:
        _print_json([_device_json(d) for d in devices])
        return 0
    rows = [
        (
            d.name + (" (this device)" if d.self else ""),
            identity.format_device_id(d.device_id),
            d.platform,
            "revoked" if d.revoked else ("nearby" if d.nearby else ("online" if d.online else "-")),
            ", ".join(d.addresses) or "-",
            _ago(d.last_seen),
        )
        for d in devices
    ]
    print(table(rows, ("NAME", "ID", "PLATFORM", "STATE", "ADDRESSES", "LAST SEEN")))
    return 0


def _device_json(d: Any) -> dict[str, Any]:
    fields = ("device_id", "name", "platform", "self", "online", "nearby", "addresses",
              "last_seen", "revoked")  # fmt: skip
    return {f: list(v) if isinstance(v := getattr(d, f), tuple) else v for f in fields}


async def cmd_pair(client: HandoffClient, args: argparse.Namespace) -> int:
    """Join an account with an invite (URL or short code; '-' reads it from stdin)."""
    invite = args.invite
    if invite == "-":
        # At a terminal, ask without echo; otherwise read one line (a pipe, a file).
        invite = getpass.getpass("invite: ") if sys.stdin.isatty() else sys.stdin.readline()
        invite = invite.strip()
        if not invite:
            raise HandoffError("no invite on stdin", code="invite-missing")
    st = await client.pair(invite, server=args.server, fingerprint=args.fingerprint, name=args.name)
    print(f"paired: {clean(st.device_name)} is in account {clean(st.account_id)}")
    return 0


async def cmd_invite(client: HandoffClient, args: argparse.Namespace) -> int:
    """Make an invite for a new device of this account."""
    inv = await client.create_invite()
    if args.json:
        _print_json({"url": inv.url, "code": inv.code, "expires_at": inv.expires_at})
        return 0
    import segno

    segno.make(inv.page_url or inv.url, error="m").terminal(compact=True)  # page: a phone opens it
    expires = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(inv.expires_at))
    minutes = max(0, round((inv.expires_at - time.time()) / 60))
    print(f"code:    {clean(inv.code)}")
    print(f"url:     {clean(inv.url)}")
    print(f"expires: {expires} (in {minutes} min; single use)")
    print("on the new device: handoff pair <code> --server <server url>, or scan the QR")
    return 0


async def _resolve_device(client: HandoffClient, text: str) -> str:
    devices = await client.devices()
    by_name = [d for d in devices if d.name == text]
    if len(by_name) == 1:
        return by_name[0].device_id
    try:
        wanted = identity.parse_device_id(text)
    except HandoffError:
        wanted = ""
    for d in devices:
        if d.device_id == wanted:
            return d.device_id
    if len(by_name) > 1:
        raise HandoffError(
            f"several devices are named {text!r}: use the id", code="device-ambiguous"
        )
    raise HandoffError(f"no device {clean(text)!r} in this account", code="device-unknown")


async def cmd_revoke(client: HandoffClient, args: argparse.Namespace) -> int:
    """Revoke a device of the account."""
    device_id = await _resolve_device(client, args.device)
    d = await client.revoke(device_id)
    print(f"revoked {clean(d.name)} ({identity.format_device_id(d.device_id)})")
    return 0


async def cmd_sessions(client: HandoffClient, args: argparse.Namespace) -> int:
    """Published sessions."""
    sessions = await client.sessions(include_withdrawn=args.all)
    if args.json:
        _print_json(
            [
                {
                    "id": s.id,
                    "app_id": s.app_id,
                    "title": s.title,
                    "state": s.state,
                    "items": len(s.items),
                    "updated_at": s.updated_at,
                }
                for s in sessions
            ]
        )
        return 0
    rows = [(s.id, s.app_id, s.title, s.state, len(s.items), _ago(s.updated_at)) for s in sessions]
    print(table(rows, ("ID", "APP", "TITLE", "STATE", "ITEMS", "UPDATED")))
    return 0


async def cmd_inbox(client: HandoffClient, args: argparse.Namespace) -> int:
    """Sessions received from other devices."""
    entries = await client.inbox()
    if args.json:
        _print_json(
            [
                {
                    "id": e.id,
                    "session_id": e.session_id,
                    "app_id": e.app_id,
                    "title": e.title,
                    "from": {"device_id": e.sender.device_id, "name": e.sender.name},
                    "state": e.state,
                    "items": [dataclasses.asdict(i) for i in e.items],
                    "context": dict(e.context),
                    "received_at": e.received_at,
                    "resumed_at": e.resumed_at,
                }
                for e in entries
            ]
        )
        return 0
    rows = [
        (e.id, e.app_id, e.title, e.sender.name or "-", e.state, len(e.items), _ago(e.received_at))
        for e in entries
    ]
    print(table(rows, ("ID", "APP", "TITLE", "FROM", "STATE", "ITEMS", "RECEIVED")))
    return 0


async def cmd_handoffs(client: HandoffClient, args: argparse.Namespace) -> int:
    """Handoffs in both directions, newest first."""
    handoffs = await client.handoffs()
    if args.json:
        _print_json([dict(h.raw) for h in handoffs])
        return 0
    rows = [
        (
            h.id,
            "to" if h.direction == "out" else "from",
            h.peer.name or h.peer.device_id[:8],
            state_text(h.state, h.attempts, h.next_retry_at, h.error),
            h.path or "-",
            f"{human_size(h.bytes_done)}/{human_size(h.bytes_total)}",
            _ago(h.updated_at),
        )
        for h in handoffs
    ]
    print(table(rows, ("ID", "DIR", "DEVICE", "STATE", "PATH", "BYTES", "UPDATED")))
    return 0


async def cmd_cancel(client: HandoffClient, args: argparse.Namespace) -> int:
    """Cancel an outgoing handoff that is not delivered yet."""
    h = await client.cancel(args.handoff)
    print(f"handoff {clean(h.id)} {clean(h.state)}")
    return 0


def _parse_setting(key: str, value: str, current: object) -> object:
    """``value`` as the type of the setting's ``current`` value."""
    if isinstance(current, bool):
        if value.lower() in {"true", "yes", "on", "1"}:
            return True
        if value.lower() in {"false", "no", "off", "0"}:
            return False
        raise HandoffError(f"{key} is true or false, not {clean(value)!r}", code="setting-invalid")
    if isinstance(current, int):
        try:
            return int(value)
        except ValueError:
            raise HandoffError(
                f"{key} is a whole number, not {clean(value)!r}", code="setting-invalid"
            ) from None
    if isinstance(current, list | tuple):
        return [v for v in (p.strip() for p in value.split(",")) if v]
    return value


async def cmd_settings(client: HandoffClient, args: argparse.Namespace) -> int:
    """Show settings, one setting, or set one (`handoff settings KEY VALUE`)."""
    current = (await client.settings()).to_json()
    if args.key is not None and args.key not in current:
        known = ", ".join(sorted(current))
        raise HandoffError(
            f"unknown setting {clean(args.key)!r} (settings: {known})", code="setting-unknown"
        )
    if args.key is not None and args.value is not None:
        value = _parse_setting(args.key, args.value, current[args.key])
        current = (await client.update_settings(**{args.key: value})).to_json()
    if args.key is not None:
        current = {args.key: current[args.key]}
    if args.json:
        _print_json(current)
        return 0
    for k, v in sorted(current.items()):
        shown = ",".join(map(str, v)) if isinstance(v, list) else v
        print(f"{k} = {clean(shown)}")
    return 0


async def cmd_send(client: HandoffClient, args: argparse.Namespace) -> int:
    """Hand a session to another device, with a progress bar until it is resumed or fails."""
    types = [t for t in args.types.split(",") if t] if args.types else None
    handoff_id = (await client.send(args.session, args.to, types=types)).id
    if args.no_wait:
        print(handoff_id)
        return 0
    h = await follow(client, handoff_id)
    state = str(h.get("state"))
    if state != "resumed":
        err = h.get("error") or {}
        raise HandoffError(
            f"handoff {state}: {clean(err.get('message') or err.get('code') or state)}",
            code=str(err.get("code") or state),
        )
    print(f"resumed on {clean((h.get('peer') or {}).get('name') or args.to)}")
    return 0


def cmd_service(args: argparse.Namespace) -> int:
    """Install, uninstall, show or render the user service."""
    from handoffd import service

    return service.main(
        args.action,
        home=args.home,
        enable=not args.no_enable,
        dry_run=args.dry_run,
        server=args.server,
    )


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``handoff`` (with the subcommands of ``COMMAND_MODULES``)."""
    parser = argparse.ArgumentParser(
        prog="handoff", description="Hand app sessions between your devices."
    )
    parser.add_argument(
        "--home",
        default=None,
        help="daemon home directory (default: $HANDOFF_HOME or the user dirs)",
    )
    parser.add_argument("--version", action="version", version=f"handoff {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str,
        func: Command | LocalCommand,
        help_text: str,
        *,
        listing: bool = False,
        daemon: bool = True,
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func, daemon=daemon)
        if listing:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    add("status", cmd_status, "show this device's state", listing=True)
    add("devices", cmd_devices, "list the account's devices", listing=True)
    p = add("pair", cmd_pair, "join an account with an invite")
    p.add_argument(
        "invite",
        help="handoff://pair?... URL or short code; '-' reads it from stdin "
        "(keeps the token out of the process list and shell history)",
    )
    p.add_argument("--server", help="server URL (with a short code)")
    p.add_argument("--fingerprint", help="server TLS fingerprint sha256:... (with a short code)")
    p.add_argument("--name", help="name for this device")
    add("invite", cmd_invite, "make an invite for a new device (QR in the terminal)", listing=True)
    p = add("revoke", cmd_revoke, "revoke a device")
    p.add_argument("device", help="device name or id")
    p = add("sessions", cmd_sessions, "list published sessions", listing=True)
    p.add_argument("--all", action="store_true", help="include withdrawn and handed-off sessions")
    add("inbox", cmd_inbox, "list received sessions", listing=True)
    add("handoffs", cmd_handoffs, "list handoffs (state, path, bytes)", listing=True)
    p = add("cancel", cmd_cancel, "cancel an outgoing handoff")
    p.add_argument("handoff", help="handoff id")
    p = add("settings", cmd_settings, "show or change settings", listing=True)
    p.add_argument("key", nargs="?", help="one setting")
    p.add_argument("value", nargs="?", help="its new value (lists comma-separated)")
    p = add("send", cmd_send, "hand a session to another device")
    p.add_argument("session", help="session id")
    p.add_argument("--to", required=True, help="target device name or id")
    p.add_argument("--types", help="comma-separated item types to send (default: all)")
    p.add_argument("--no-wait", action="store_true", help="print the handoff id and return")
    p = add("service", cmd_service, "install, uninstall or show the user service", daemon=False)
    p.add_argument("action", choices=("install", "uninstall", "status", "render"))
    p.add_argument("--no-enable", action="store_true", help="write the file; do not enable it")
    p.add_argument("--dry-run", action="store_true", help="print what install would do; no change")
    p.add_argument("--server", action="store_true", help="render: the server's unit/plist")
    for module in (*BUILTIN_COMMAND_MODULES, *COMMAND_MODULES):
        importlib.import_module(module).register(add)
    return parser


async def _run(args: argparse.Namespace) -> int:
    async with HandoffClient(home=args.home) as client:
        result: int = await args.func(client, args)
        return result


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``handoff`` console script."""
    args = build_parser().parse_args(argv)
    if args.home is not None:
        os.environ["HANDOFF_HOME"] = args.home
    try:
        if not args.daemon:
            local: LocalCommand = args.func
            return local(args)
        return asyncio.run(_run(args))
    except HandoffError as exc:
        print(f"handoff: {clean(exc.message)}", file=sys.stderr)
        return 1
    except TimeoutError:
        print("handoff: the daemon did not answer in time", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `handoff devices | head`: the reader left; say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("handoff: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
