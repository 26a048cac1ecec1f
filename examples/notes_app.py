"""A small terminal notes app that hands its session off through handoffd.

It keeps a notebook: a list of chat-like messages, one document, a draft and a
cursor. ``publish`` puts the current notebook on the local daemon as a session;
when the daemon of another device receives it, that daemon launches this app
with ``HANDOFF_ID`` (and ``HANDOFF_HOME``) set, and ``resume`` reads the inbox
entry, shows the context and confirms, so the source learns it was resumed.

    python examples/notes_app.py publish --home DIR [--messages N] [--document FILE]
    python examples/notes_app.py resume --home DIR [--handoff ID]
    python examples/notes_app.py register --home DIR   # tell the daemon how to launch us
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
from pathlib import Path

from handoffd.control.client import HandoffClient, Item
from handoffd.errors import HandoffError

APP_ID = "org.handoffd.notes"
SELF = os.path.abspath(__file__)


def _clean(text: str) -> str:
    """Text from another device, safe to print on a terminal."""
    return "".join(ch if ch.isprintable() or ch == "\n" else "?" for ch in text)


async def publish(home: str | None, messages: int, document: Path | None) -> int:
    """Publish the notebook as a session; print its id."""
    items = [
        Item.of_text("message", f"msg-{i:03d}.txt", f"note {i}: pick up the thread here")
        for i in range(1, messages + 1)
    ]
    if document is not None:
        items.append(Item.of_path("document", document.name, document))
    context = {
        "notebook": "Trip plans",
        "draft": "Remember to book the train",
        "cursor": {"message": messages, "offset": 12},
    }
    async with HandoffClient(home=home) as client:
        session = await client.publish(APP_ID, "Trip plans", context=context, items=items)
    print(session.id)
    return 0


async def register(home: str | None) -> int:
    """Register the command the daemon runs to resume a session in this app."""
    launch = [sys.executable, SELF, "resume"]
    async with HandoffClient(home=home) as client:
        await client.register_app(APP_ID, launch)
    print(f"registered {APP_ID}: {' '.join(launch)}")
    return 0


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


async def resume(home: str | None, handoff_id: str | None) -> int:
    """Open a received session, show it, and confirm it was resumed."""
    handoff_id = handoff_id or os.environ.get("HANDOFF_ID")
    if not handoff_id:
        print("notes: no handoff to resume (HANDOFF_ID is not set)", file=sys.stderr)
        return 2
    async with HandoffClient(home=home) as client:
        entry = await client.inbox_entry(handoff_id)
        messages = [i for i in entry.items if i.type == "message"]
        documents = [i for i in entry.items if i.type == "document"]
        origin = entry.sender.name or "another device"
        print(f"notes: resumed {_clean(entry.title)!r} from {_clean(origin)}")
        print(f"notes: context {_clean(json.dumps(entry.context, sort_keys=True))}")
        print(f"notes: {len(messages)} message(s), {len(documents)} document(s)")
        if messages:
            last = await asyncio.to_thread(Path(messages[-1].path).read_text, "utf-8")
            print(f"notes: last message: {_clean(last)}")
        for doc in documents:
            digest = await asyncio.to_thread(_sha256, Path(doc.path))
            print(f"notes: document {_clean(doc.name)} {doc.size} bytes sha256={digest}")
        await client.confirm_resumed(handoff_id)
    print("notes: confirmed; the source device has been told")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="notes_app", description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=os.environ.get("HANDOFF_HOME"))
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("publish")
    p.add_argument("--messages", type=int, default=100)
    p.add_argument("--document", type=Path, default=None)
    sub.add_parser("register")
    p = sub.add_parser("resume")
    p.add_argument("--handoff", default=None)
    args = parser.parse_args(argv)
    try:
        if args.command == "publish":
            return asyncio.run(publish(args.home, args.messages, args.document))
        if args.command == "register":
            return asyncio.run(register(args.home))
        return asyncio.run(resume(args.home, args.handoff))
    except HandoffError as exc:
        print(f"notes: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
