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
import importlib
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from handoffd import __version__
from handoffd.console import ago, clean, grouped_id, human_size, state_text, table
from handoffd.errors import HandoffError
from handoffd.subcommands import Command, LocalCommand

if TYPE_CHECKING:  # imported when a command talks to the daemon (it loads aiohttp)
    from handoffd.control.answers import Device
    from handoffd.control.client import HandoffClient

# Modules that add subcommands: each defines ``register(add: AddCommand) -> None``.
# Each imports only what its commands need when they run (``handoff status`` stays quick).
BUILTIN_COMMAND_MODULES: tuple[str, ...] = (
    "handoffd.commands.demo",
    "handoffd.commands.pairing",
    "handoffd.commands.events",
    "handoffd.commands.completion",
    "handoffd.servicecli",
    "handoffd.cli_send",
    "handoffd.cli_inbox",
)
COMMAND_MODULES: tuple[str, ...] = ()


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


# ---------------------------------------------------------------- commands


def cmd_status(args: argparse.Namespace) -> int:
    """Device, account, pairing and server state (a quick read: no aiohttp)."""
    from handoffd.commands import quick
    from handoffd.control.answers import Status

    st = quick.get_as(Status, "/v1/status", home=args.home)
    if args.json:
        _print_json(st.raw)
        return 0
    account = st.account_id
    if account and st.account_name:
        account = f"{st.account_name} ({account})"
    reachable = st.server_reachable
    rows = [
        ("device", f"{clean(st.device_name)} ({grouped_id(st.device_id)})"),
        (
            "paired",
            "yes"
            if st.paired
            else "no (run `handoff pair CODE@SERVER` as `handoff invite` on a paired device "
            "or `handoff-server invite` prints it)",
        ),
        ("account", account or "-"),
        ("server", st.server_url or "-"),
        ("server reachable", "-" if reachable is None else ("yes" if reachable else "no")),
        ("handoff enabled", "yes" if st.handoff_enabled else "no"),
        ("revoked", "YES (run `handoff unpair`, then pair again)" if st.revoked else "no"),
        ("version", st.version),
    ]
    print(table(rows, ("", "")).split("\n", 1)[1])
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    """The account's devices (a quick read); cached data is marked when the server is down."""
    from handoffd.commands import quick
    from handoffd.control.answers import DeviceList

    answer = quick.get_as(DeviceList, "/v1/devices", home=args.home)
    cached = answer.source == "cache"
    if args.json:
        body = answer.raw
        body["devices"] = [_device_json(d) for d in body["devices"]]
        _print_json(body)
        return 0
    rows = [
        (
            d.name + (" (this device)" if d.self else ""),
            grouped_id(d.device_id),
            d.platform,
            _device_state(d, cached),
            ", ".join(d.addresses) or "-",
            ago(d.last_seen),
        )
        for d in answer.devices
    ]
    print(table(rows, ("NAME", "ID", "PLATFORM", "STATE", "ADDRESSES", "LAST SEEN")))
    if cached:
        print(
            f"handoff: the server could not be reached ({clean(answer.server_error or '')}): "
            "this list is cached; online states are as last known",
            file=sys.stderr,
        )
    return 0


def _device_state(d: Device, cached: bool) -> str:
    if d.revoked:
        return "revoked"
    if d.nearby:
        return "nearby"
    if d.online:
        return "online (cached)" if cached else "online"
    return "-"


def _device_json(d: dict[str, Any]) -> dict[str, Any]:
    fields = ("device_id", "name", "platform", "self", "online", "nearby", "addresses",
              "last_seen", "revoked")  # fmt: skip
    return {f: d.get(f) for f in fields}


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
    rows = [(s.id, s.app_id, s.title, s.state, len(s.items), ago(s.updated_at)) for s in sessions]
    print(table(rows, ("ID", "APP", "TITLE", "STATE", "ITEMS", "UPDATED")))
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
            ago(h.updated_at),
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


def _setting_text(value: object) -> str:
    """A value as the config file writes it: ``true``/``false``, lists comma-separated."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(_setting_text(v) for v in value)
    return str(value)


async def cmd_settings(client: HandoffClient, args: argparse.Namespace) -> int:
    """Show settings, one setting, or set one (`handoff settings KEY VALUE`)."""
    from handoffd.config import show_value  # true/false, lists comma-separated

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
        print(f"{k} = {clean(show_value(v))}")
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``handoff`` (with the subcommands of ``COMMAND_MODULES``).

    ``--home`` is accepted before or after the subcommand (the one after wins).
    """
    parser = argparse.ArgumentParser(
        prog="handoff", description="Hand app sessions between your devices."
    )
    home_help = "daemon home directory (default: $HANDOFF_HOME or the user dirs)"
    parser.add_argument("--home", default=None, help=home_help)
    parser.add_argument("--version", action="version", version=f"handoff {__version__}")
    # The same option after the subcommand; SUPPRESS: absent there, the first one stays.
    home_after = argparse.ArgumentParser(add_help=False)
    home_after.add_argument("--home", default=argparse.SUPPRESS, help=home_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str,
        func: Command | LocalCommand,
        help_text: str,
        *,
        listing: bool = False,
        daemon: bool = True,
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[home_after])
        p.set_defaults(func=func, daemon=daemon)
        if listing:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    add("status", cmd_status, "show this device's state", listing=True, daemon=False)
    add("devices", cmd_devices, "list the account's devices", listing=True, daemon=False)
    p = add("sessions", cmd_sessions, "list published sessions", listing=True)
    p.add_argument("--all", action="store_true", help="include withdrawn and handed-off sessions")
    add("handoffs", cmd_handoffs, "list handoffs (state, path, bytes)", listing=True)
    p = add("cancel", cmd_cancel, "cancel an outgoing handoff")
    p.add_argument("handoff", help="handoff id")
    p = add("settings", cmd_settings, "show or change settings", listing=True)
    p.add_argument("key", nargs="?", help="one setting")
    p.add_argument("value", nargs="?", help="its new value (lists comma-separated)")
    for module in (*BUILTIN_COMMAND_MODULES, *COMMAND_MODULES):
        importlib.import_module(module).register(add)
    parser.set_defaults(root_parser=parser)
    return parser


async def _run(args: argparse.Namespace) -> int:
    from handoffd.control.client import HandoffClient

    async with HandoffClient(home=args.home) as client:
        result: int = await args.func(client, args)
        return result


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``handoff`` console script."""
    if list(sys.argv[1:] if argv is None else argv) == ["--version"]:
        print(f"handoff {__version__}")  # at once: no parser, no command modules
        return 0
    args = build_parser().parse_args(argv)
    if args.home is not None:
        os.environ["HANDOFF_HOME"] = args.home
    try:
        if not args.daemon:
            local: LocalCommand = args.func
            return local(args)
        import asyncio

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
        note = getattr(args, "interrupt_note", None) or "interrupted"
        end_line = "\n" if sys.stderr.isatty() else ""  # after a progress line drawn in place
        print(f"{end_line}handoff: {note}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
