"""``handoff demo [--keep]``, registered here so that ``handoff`` loads the demo (asyncio,
subprocesses, the server) only when the demo runs."""

from __future__ import annotations

import argparse
import importlib

from handoffd.subcommands import AddCommand

__all__ = ["register"]


def cmd_demo(args: argparse.Namespace) -> int:
    """A server and two daemons on this machine; one session handed over."""
    demo = importlib.import_module("handoffd.demo")  # nothing imports it statically
    result: int = demo.cmd_demo(args)
    return result


def register(add: AddCommand) -> None:
    """Add ``demo``."""
    p = add(
        "demo", cmd_demo, "run the demo: a server and two daemons on this machine", daemon=False
    )
    p.add_argument("--keep", action="store_true", help="leave everything running afterwards")
