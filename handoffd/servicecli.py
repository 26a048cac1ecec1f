"""``handoff service install|uninstall|status|render``: one subcommand per action, each with only
its own options (``handoff service install --help`` lists install's). The work is in
``handoffd.service``, imported only when the command runs."""

from __future__ import annotations

import argparse

from handoffd.subcommands import AddCommand

ACTIONS = {
    "install": "write the user service file, create the daemon's folders, enable and start it",
    "uninstall": "stop and disable the user service and remove its file (the data stays)",
    "status": "say whether the user service is installed and what the service manager reports",
    "render": "print the service file as it would be installed",
}


def register(add: AddCommand) -> None:
    """Add ``handoff service`` and its actions."""
    p = add("service", cmd_service, "install, uninstall or show the user service", daemon=False)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    parsers = {
        name: actions.add_parser(name, help=text, description=text)
        for name, text in ACTIONS.items()
    }
    install = parsers["install"]
    install.add_argument(
        "--no-enable", action="store_true", help="write the file; do not enable it"
    )
    install.add_argument(
        "--dry-run", action="store_true", help="print what would be done; no change"
    )
    parsers["render"].add_argument(
        "--server", action="store_true", help="the server's system unit (LaunchDaemon on macOS)"
    )


def cmd_service(args: argparse.Namespace) -> int:
    """Run the chosen action."""
    from handoffd import service

    return service.main(
        args.action,
        home=args.home,
        enable=not getattr(args, "no_enable", False),
        dry_run=getattr(args, "dry_run", False),
        server=getattr(args, "server", False),
    )
