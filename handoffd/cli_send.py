"""``handoff send``: a published session (``handoff send SESSION_ID``), or files and folders, a
text, a URL or the clipboard built into a session by the daemon, handed to a device with the
progress bar.

Waiting: until the target resumes it (``--wait resumed``), or only until it is delivered
(``--wait delivered``). By default (``auto``) a handoff that is delivered but not resumed within
``--grace`` seconds ends the command with "delivered; waiting for DEVICE to open it": the target
keeps it in its inbox (no app to resume it, or its person decides).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from handoffd.console import clean, follow
from handoffd.errors import HandoffError
from handoffd.subcommands import AddCommand

if TYPE_CHECKING:  # loaded when the command runs (every command imports this module)
    from handoffd.control.client import HandoffClient

SESSION_ID_RE = re.compile(r"[0-9a-f]{32}")
PASTE_COMMANDS = (("wl-paste", "--no-newline"), ("xclip", "-o", "-selection", "clipboard"),
                  ("pbpaste",))  # fmt: skip
MAX_CLIPBOARD = 2 * 1024 * 1024


def read_clipboard() -> str:
    """The clipboard's text, through the first of wl-paste, xclip or pbpaste present."""
    for argv in PASTE_COMMANDS:
        program = shutil.which(argv[0])
        if program is None:
            continue
        try:
            done = subprocess.run(
                [program, *argv[1:]], capture_output=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise HandoffError(f"{argv[0]} failed: {exc}", code="clipboard-unreadable") from None
        if done.returncode != 0:
            raise HandoffError(
                f"{argv[0]} could not read the clipboard", code="clipboard-unreadable"
            )
        if len(done.stdout) > MAX_CLIPBOARD:
            raise HandoffError("the clipboard holds too much to send", code="text-too-large")
        try:
            return done.stdout.decode("utf-8")
        except UnicodeDecodeError:
            raise HandoffError(
                "the clipboard holds no text (only text is sent)", code="clipboard-not-text"
            ) from None
    raise HandoffError(
        "no clipboard tool found (wl-paste, xclip or pbpaste)", code="clipboard-unavailable"
    )


def _is_session(args: argparse.Namespace) -> bool:
    """One argument that is a session id and not a file here: send that session."""
    return (
        len(args.paths) == 1
        and SESSION_ID_RE.fullmatch(args.paths[0]) is not None
        and not os.path.lexists(args.paths[0])
    )


def _read_stdin() -> str:
    data = sys.stdin.buffer.read(MAX_CLIPBOARD + 1)
    if len(data) > MAX_CLIPBOARD:
        raise HandoffError("the text on stdin is too long to send", code="text-too-large")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise HandoffError("the text on stdin is not UTF-8", code="text-not-utf8") from None


def _absolute(paths: list[str]) -> list[str]:
    return [os.path.abspath(p) for p in paths]


async def _start(client: HandoffClient, args: argparse.Namespace) -> str:
    given = [bool(args.paths), args.text is not None, args.url is not None, args.clipboard]
    if sum(given) != 1:
        raise HandoffError(
            "send one thing: PATH…, a session id, --text, --url or --clipboard", code="send-what"
        )
    if args.paths and _is_session(args):
        types = None if args.types is None else [t for t in args.types.split(",") if t]
        return (await client.send(args.paths[0], args.to, types=types)).id
    if args.types is not None:
        raise HandoffError("--types goes with a session id only", code="send-what")
    if args.paths:
        paths = _absolute(args.paths)
        return (await client.send_content(args.to, paths=paths)).id
    if args.text is not None:
        import asyncio

        text = await asyncio.to_thread(_read_stdin) if args.text == "-" else args.text
        return (await client.send_content(args.to, text=text)).id
    if args.url is not None:
        return (await client.send_content(args.to, url=args.url)).id
    import asyncio

    text = await asyncio.to_thread(read_clipboard)
    return (await client.send_content(args.to, clipboard=text)).id


async def cmd_send(client: HandoffClient, args: argparse.Namespace) -> int:
    """Hand something to another device, with a progress bar."""
    handoff_id = await _start(client, args)
    if args.no_wait:
        print(handoff_id)
        return 0
    args.interrupt_note = (
        f"stopped watching; handoff {handoff_id} goes on in the daemon "
        f"(`handoff handoffs` shows it, `handoff cancel {handoff_id}` stops it)"
    )
    delivered_at: list[float] = []

    def enough(h: Mapping[str, Any]) -> bool:
        if h.get("state") == "waiting-for-device":
            return bool(args.wait == "auto")
        if h.get("state") != "delivered" or args.wait == "resumed":
            return False
        if args.wait == "delivered" or h.get("kept_in_inbox"):
            return True
        if not delivered_at:
            delivered_at.append(time.monotonic())
        return bool(time.monotonic() - delivered_at[0] >= args.grace)

    h = await follow(client, handoff_id, until=enough)
    state = str(h.get("state"))
    peer = clean((h.get("peer") or {}).get("name") or args.to)
    if state == "delivered":
        print(f"delivered; waiting for {peer} to open it")
        return 0
    if state == "waiting-for-device":
        until = float(h.get("waiting_until") or h.get("next_retry_at") or time.time())
        hours = max(0, int(until - time.time())) / 3600
        print(
            f"{peer} is offline: queued; it goes when {peer} comes online (waits up to "
            f"{hours:.0f} h; handoff cancel {handoff_id})"
        )
        return 0
    if state != "resumed":
        err = h.get("error") or {}
        raise HandoffError(
            f"handoff {state}: {clean(err.get('message') or err.get('code') or state)}",
            code=str(err.get("code") or state),
        )
    print(f"resumed on {peer}")
    return 0


def register(add: AddCommand) -> None:
    """Add ``handoff send``."""
    p = add("send", cmd_send, "hand files, folders, text, a URL, the clipboard or a session over")
    p.add_argument(
        "paths", nargs="*", metavar="PATH", help="files and folders to send, or one session id"
    )
    p.add_argument("--to", required=True, help="target device name (any case) or id")
    p.add_argument("--text", help="send this text ('-': read it from stdin)")
    p.add_argument("--url", help="send this http(s) URL (opened on the target)")
    p.add_argument("--clipboard", action="store_true", help="send the clipboard's text")
    p.add_argument(
        "--types", help="with a session id: comma-separated item types to send (default: all)"
    )
    p.add_argument(
        "--wait",
        choices=("auto", "delivered", "resumed"),
        default="auto",
        help="wait until resumed, or delivered (also through a wait for an offline target); "
        "auto (default): resumed, or delivered and kept in the target's inbox, or queued "
        "for an offline target",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=15.0,
        help="--wait auto: seconds to wait for the target to resume after delivery (15)",
    )
    p.add_argument("--no-wait", action="store_true", help="print the handoff id and return")
