"""``handoff events [--json]``: the daemon's events as they happen, until Ctrl-C.

Text: one line per event, ``HH:MM:SS type key=value ...`` (values from other
devices made printable); ``--json``: one JSON object per line (NDJSON), as
the daemon sends them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from handoffd.console import clean
from handoffd.subcommands import AddCommand

if TYPE_CHECKING:
    from handoffd.control.client import HandoffClient

__all__ = ["event_line", "register"]


def event_line(event: dict[str, Any], now: float) -> str:
    """``14:05:09 device.online device_id=...`` (keys sorted, nested values as JSON)."""
    fields = " ".join(
        f"{clean(k)}={clean(v if isinstance(v, str) else json.dumps(v, sort_keys=True))}"
        for k, v in sorted(event.items())
        if k != "type"
    )
    stamp = time.strftime("%H:%M:%S", time.localtime(now))
    return f"{stamp} {clean(event.get('type', '?'))}{' ' + fields if fields else ''}"


async def cmd_events(client: HandoffClient, args: argparse.Namespace) -> int:
    """Stream the daemon's events until it closes the stream or Ctrl-C."""
    args.interrupt_note = "stopped"
    async for event in client.events():
        if args.json:
            print(json.dumps(event, sort_keys=True), flush=True)
        else:
            print(event_line(event, time.time()), flush=True)
    print("handoff: the daemon closed the event stream", file=sys.stderr)
    return 0


def register(add: AddCommand) -> None:
    """Add ``events``."""
    add("events", cmd_events, "print the daemon's events as they happen", listing=True)
