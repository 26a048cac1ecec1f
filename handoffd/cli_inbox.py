"""``handoff inbox [open|resume|discard ID]``, ``handoff accept ID``, ``handoff decline ID``:
what was received, the offers waiting for an answer, and acting on them."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handoffd.console import ago, clean, human_size, table
from handoffd.errors import ApiError, HandoffError
from handoffd.subcommands import AddCommand

if TYPE_CHECKING:  # loaded when the command runs (every command imports this module)
    from handoffd.control.client import HandoffClient, InboxEntry

TEXT_APPS = ("handoff.text", "handoff.clipboard")


def _entry_json(e: InboxEntry) -> dict[str, Any]:
    return {
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


async def _list(client: HandoffClient, args: argparse.Namespace) -> int:
    entries = await client.inbox()
    asking = await client.asking()
    if args.json:
        shown = [*(a.raw for a in asking), *map(_entry_json, entries)]
        print(json.dumps(shown, indent=2, sort_keys=True))
        return 0
    rows = [
        (
            a.id,
            a.app_id,
            a.title,
            a.sender.name or "-",
            f"asking ({max(0, int(a.deadline - time.time()))}s left)",
            f"{a.items} ({human_size(a.size)})",
            ago(a.asked_at),
        )
        for a in asking
    ]
    rows += [
        (
            e.id,
            e.app_id,
            e.title,
            e.sender.name or "-",
            e.state,
            str(len(e.items)),
            ago(e.received_at),
        )
        for e in entries
    ]
    print(table(rows, ("ID", "APP", "TITLE", "FROM", "STATE", "ITEMS", "RECEIVED")))
    if asking:
        print("answer with: handoff accept ID | handoff decline ID")
    return 0


def _print_text(entry: InboxEntry) -> bool:
    if entry.app_id not in TEXT_APPS or not entry.items:
        return False
    print(Path(entry.items[0].path).read_text("utf-8"))
    return True


async def cmd_inbox(client: HandoffClient, args: argparse.Namespace) -> int:
    """Received sessions and offers waiting for an answer; act on one."""
    if args.action is None:
        return await _list(client, args)
    if args.id is None:
        raise HandoffError(f"handoff inbox {args.action} needs an entry ID", code="usage")
    if args.action == "discard":
        await client.discard(args.id)
        print(f"discarded {clean(args.id)}")
        return 0
    if args.action == "resume":
        entry = await client.confirm_resumed(args.id)
        print(f"resumed {clean(entry.title)}; {clean(entry.sender.name or 'the sender')} is told")
        return 0
    try:
        await client.open_entry(args.id)
    except ApiError as exc:
        if exc.code != "no-receiver":
            raise
        # Text with no clipboard on this device: show it here, and it counts as opened.
        entry = await client.inbox_entry(args.id)
        if not _print_text(entry):
            raise
        await client.confirm_resumed(args.id)
        return 0
    entry = await client.inbox_entry(args.id)
    print(f"opened {clean(entry.title)}")
    return 0


async def cmd_accept(client: HandoffClient, args: argparse.Namespace) -> int:
    """Accept an offer waiting for an answer."""
    a = await client.accept(args.id)
    print(f"accepted {clean(a.title)} from {clean(a.sender.name or '-')}")
    return 0


async def cmd_decline(client: HandoffClient, args: argparse.Namespace) -> int:
    """Decline an offer waiting for an answer (the sender is told)."""
    a = await client.decline(args.id)
    print(f"declined {clean(a.title)} from {clean(a.sender.name or '-')}")
    return 0


def register(add: AddCommand) -> None:
    """Add ``handoff inbox``, ``handoff accept`` and ``handoff decline``."""
    p = add(
        "inbox",
        cmd_inbox,
        "list received sessions and offers waiting for an answer; open, resume or discard one",
        listing=True,
    )
    p.add_argument("action", nargs="?", choices=("open", "resume", "discard"))
    p.add_argument("id", nargs="?", help="inbox entry id")
    p = add("accept", cmd_accept, "accept an offer waiting for an answer")
    p.add_argument("id", help="the offer's id (handoff inbox)")
    p = add("decline", cmd_decline, "decline an offer waiting for an answer")
    p.add_argument("id", help="the offer's id (handoff inbox)")
