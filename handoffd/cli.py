"""``handoff``: the command line, a thin client of the daemon's control API.

Exit status 0 on success; 1 with one line on stderr on any error; 2 for a
usage error. Every listing takes ``--json``. Text that comes from other
devices (names, titles) is stripped of control characters before printing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from handoffd import __version__, identity
from handoffd.control.client import HandoffClient
from handoffd.errors import HandoffError

Command = Callable[[HandoffClient, argparse.Namespace], Awaitable[int]]
FINAL_STATES = frozenset({"resumed", "failed", "cancelled", "declined"})


def clean(value: object) -> str:
    """Printable text: control characters (ANSI escapes included) become '?'."""
    return "".join(ch if ch.isprintable() else "?" for ch in str(value))


def table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    """An aligned text table."""
    cells = [[clean(h) for h in headers], *[[clean(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


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
        invite = sys.stdin.readline().strip()
    st = await client.pair(invite, server=args.server, fingerprint=args.fingerprint, name=args.name)
    print(f"paired: {clean(st.device_name)} is in account {st.account_id}")
    return 0


async def cmd_invite(client: HandoffClient, args: argparse.Namespace) -> int:
    """Make an invite for a new device of this account."""
    inv = await client.create_invite()
    if args.json:
        _print_json({"url": inv.url, "code": inv.code, "expires_at": inv.expires_at})
        return 0
    import segno

    segno.make(inv.url, error="m").terminal(compact=True)
    expires = time.strftime("%H:%M:%S", time.localtime(inv.expires_at))
    print(f"code:    {inv.code}")
    print(f"url:     {inv.url}")
    print(f"expires: {expires} (single use)")
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
    result = await client.request("GET", "/v1/inbox")
    entries = result.get("inbox", result) if isinstance(result, dict) else result
    if args.json:
        _print_json(entries)
        return 0
    rows = [
        (
            e.get("id"),
            e.get("app_id"),
            e.get("title"),
            (e.get("from") or {}).get("name", "-"),
            e.get("state"),
            len(e.get("items", [])),
            _ago(e.get("received_at")),
        )
        for e in entries
    ]
    print(table(rows, ("ID", "APP", "TITLE", "FROM", "STATE", "ITEMS", "RECEIVED")))
    return 0


def _parse_setting(key: str, value: str) -> Any:
    if value.lower() in {"true", "yes", "on"}:
        return True
    if value.lower() in {"false", "no", "off"}:
        return False
    if key in {"accept_types", "unicast_peers"}:
        return [v for v in (p.strip() for p in value.split(",")) if v]
    if value.isdigit():
        return int(value)
    return value


async def cmd_settings(client: HandoffClient, args: argparse.Namespace) -> int:
    """Show settings, one setting, or set one (`handoff settings KEY VALUE`)."""
    if args.key and args.value is not None:
        current = (
            await client.update_settings(**{args.key: _parse_setting(args.key, args.value)})
        ).to_json()
    else:
        current = (await client.settings()).to_json()
    if args.key:
        if args.key not in current:
            raise HandoffError(f"unknown setting {clean(args.key)!r}", code="setting-unknown")
        current = {args.key: current[args.key]}
    if args.json:
        _print_json(current)
        return 0
    for k, v in sorted(current.items()):
        shown = ",".join(map(str, v)) if isinstance(v, list) else v
        print(f"{k} = {clean(shown)}")
    return 0


def _bar(done: int, total: int, width: int = 28) -> str:
    filled = width if total <= 0 else min(width, done * width // total)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


async def cmd_send(client: HandoffClient, args: argparse.Namespace) -> int:
    """Hand a session to another device, with a progress bar until it is resumed or fails."""
    body: dict[str, Any] = {"session_id": args.session, "target": args.to}
    if args.types:
        body["types"] = [t for t in args.types.split(",") if t]
    h = await client.request("POST", "/v1/handoffs", body)
    handoff_id = str(h["id"])
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


async def follow(client: HandoffClient, handoff_id: str, *, prefix: str = "") -> dict[str, Any]:
    """Draw the handoff's progress (bytes, rate, time left, state, path) until it ends; its record.

    On a terminal the bar is redrawn in place; otherwise one line per state.
    """
    tty = sys.stdout.isatty()
    start = time.monotonic()
    last_state, last_line = "", ""
    while True:
        h: dict[str, Any] = await client.request("GET", f"/v1/handoffs/{handoff_id}")
        state = str(h.get("state"))
        done, total = int(h.get("bytes_done") or 0), int(h.get("bytes_total") or 0)
        elapsed = max(time.monotonic() - start, 1e-6)
        rate = done / elapsed
        left = (total - done) / rate if rate > 0 and total > done else 0
        extra = f" attempt {h.get('attempts')}" if state == "retrying" else ""
        line = (
            f"{prefix}{_bar(done, total)} {_size(done)}/{_size(total)} {_size(rate)}/s "
            f"{int(left)}s left  {state} via {h.get('path') or '-'}{extra}"
        )
        if tty:
            if state != last_state and last_state:
                print()
            print("\r" + line.ljust(len(last_line)), end="", flush=True)
        elif state != last_state:
            print(line, flush=True)
        last_line, last_state = line, state
        if state in FINAL_STATES:
            if tty:
                print()
            return h
        await asyncio.sleep(0.2)


async def cmd_service(client: HandoffClient | None, args: argparse.Namespace) -> int:
    """Install, uninstall or show the user service."""
    from handoffd import service

    return service.main(args.action, home=args.home, dry_run=args.dry_run)


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``handoff``."""
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

    def add(name: str, func: Any, help_text: str, listing: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        if listing:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    add("status", cmd_status, "show this device's state", listing=True)
    add("devices", cmd_devices, "list the account's devices", listing=True)
    p = add("pair", cmd_pair, "join an account with an invite")
    p.add_argument("invite", help="handoff://pair?... URL or short code; '-' reads it from stdin")
    p.add_argument("--server", help="server URL (with a short code)")
    p.add_argument("--fingerprint", help="server TLS fingerprint sha256:... (with a short code)")
    p.add_argument("--name", help="name for this device")
    add("invite", cmd_invite, "make an invite for a new device (QR in the terminal)", listing=True)
    p = add("revoke", cmd_revoke, "revoke a device")
    p.add_argument("device", help="device name or id")
    p = add("sessions", cmd_sessions, "list published sessions", listing=True)
    p.add_argument("--all", action="store_true", help="include withdrawn and handed-off sessions")
    add("inbox", cmd_inbox, "list received sessions", listing=True)
    p = add("settings", cmd_settings, "show or change settings", listing=True)
    p.add_argument("key", nargs="?")
    p.add_argument("value", nargs="?")
    p = add("send", cmd_send, "hand a session to another device")
    p.add_argument("session", help="session id")
    p.add_argument("--to", required=True, help="target device name or id")
    p.add_argument("--types", help="comma-separated item types to send (default: all)")
    p.add_argument("--no-wait", action="store_true", help="print the handoff id and return")
    p = add("service", cmd_service, "install, uninstall or show the user service")
    p.add_argument("action", choices=("install", "uninstall", "status"))
    p.add_argument("--dry-run", action="store_true", help="write the file only; do not enable it")
    p = add("demo", None, "run the demo: a server and two daemons on this machine")
    p.add_argument("--keep", action="store_true", help="leave everything running afterwards")
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
        if args.command == "demo":
            from handoffd import demo

            return demo.run(keep=args.keep)
        if args.command == "service":
            return asyncio.run(cmd_service(None, args))
        return asyncio.run(_run(args))
    except HandoffError as exc:
        print(f"handoff: {clean(exc.message)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("handoff: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
