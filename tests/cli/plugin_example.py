"""A subcommand module as ``handoffd.cli.COMMAND_MODULES`` lists them (used by test_cli)."""

from __future__ import annotations

import argparse

from handoffd.subcommands import AddCommand


def hello(args: argparse.Namespace) -> int:
    """Print a greeting; needs no daemon."""
    print(f"hello {args.who}")
    return 0


def register(add: AddCommand) -> None:
    """Add ``hello WHO``."""
    p = add("hello", hello, "say hello", daemon=False)
    p.add_argument("who")
