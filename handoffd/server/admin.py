"""``handoff-server account create|list|passwd|delete``: the accounts, from the command line.

Passwords: ``--password-file FILE`` (its first line), else asked twice without
echo at a terminal, else one line read from stdin (``echo pw | handoff-server
account create alice``); nothing on stdin is a clear error, never a traceback.
``account delete`` asks for confirmation (type the account's name) unless
``--yes``; without a terminal and without ``--yes`` it refuses.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from handoffd.errors import HandoffError
from handoffd.server.store import Store

__all__ = ["add_account_commands", "read_password"]

AccountCommand = Callable[[argparse.Namespace], int]


def _ask_twice() -> str:
    try:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise HandoffError("the passwords differ", code="password-mismatch")
    except EOFError:
        raise HandoffError("no password typed", code="password-empty") from None
    return password


def read_password(args: argparse.Namespace) -> str | None:
    """The new password (None with ``--no-password``): file, terminal or stdin."""
    if getattr(args, "no_password", False):
        return None
    if args.password_file:
        text = Path(args.password_file).read_text(encoding="utf-8")
        password = text.splitlines()[0] if text else ""
    elif sys.stdin is not None and sys.stdin.isatty():
        password = _ask_twice()
    else:
        line = "" if sys.stdin is None else sys.stdin.readline(4096)
        password = line.rstrip("\r\n")
        if not password:
            raise HandoffError(
                "no password: pipe one line on stdin, use --password-file FILE, "
                "or --no-password (no web login)",
                code="password-empty",
            )
    if not password:
        raise HandoffError("the password is empty", code="password-empty")
    return password


def confirm(question: str, expected: str, args: argparse.Namespace) -> None:
    """Go on only with ``--yes`` or if the person types ``expected``; else ``not-confirmed``."""
    if args.yes:
        return
    if sys.stdin is None or not sys.stdin.isatty():
        raise HandoffError(
            f"{question}: not confirmed (no terminal to ask); add --yes to go ahead",
            code="not-confirmed",
        )
    try:
        answer = input(f"{question}\ntype {expected!r} to confirm: ")
    except EOFError:
        answer = ""
    if answer.strip() != expected:
        raise HandoffError("not confirmed; nothing was changed", code="not-confirmed")


def _open(args: argparse.Namespace) -> Store:
    return Store.open(args.data, database=args.database)


def cmd_create(args: argparse.Namespace) -> int:
    """``account create NAME``: prints the account id."""
    password = read_password(args)
    store = _open(args)
    try:
        account = store.create_account(args.name, password)
    finally:
        store.close()
    print(account.account_id)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """``account list [--json]``: name, id, devices (active/all), web login, created."""
    store = _open(args)
    try:
        rows: list[dict[str, Any]] = []
        for account in store.list_accounts():
            devices = store.list_devices(account.account_id)
            rows.append(
                {
                    "account_id": account.account_id,
                    "name": account.name,
                    "devices": len(devices),
                    "active_devices": sum(not d.revoked for d in devices),
                    "web_login": account.has_password,
                    "created_at": account.created_at,
                }
            )
    finally:
        store.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no accounts (create one: handoff-server account create NAME)")
        return 0
    header: tuple[str, ...] = ("NAME", "ID", "DEVICES", "WEB LOGIN", "CREATED")
    table: list[tuple[str, ...]] = [
        header,
        *[
            (
                str(r["name"]),
                str(r["account_id"]),
                f"{r['active_devices']}/{r['devices']}",
                "yes" if r["web_login"] else "no",
                dt.datetime.fromtimestamp(r["created_at"]).astimezone().strftime("%Y-%m-%d %H:%M"),
            )
            for r in rows
        ],
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_passwd(args: argparse.Namespace) -> int:
    """``account passwd NAME``: a new web-login password."""
    store = _open(args)
    try:
        account = store.resolve_account(args.name)
        password = read_password(args)
        assert password is not None  # noqa: S101 - passwd has no --no-password
        store.set_password(account.account_id, password)
    finally:
        store.close()
    print(f"password changed for {account.name}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """``account delete NAME [--yes]``: the account, its devices and invites."""
    store = _open(args)
    try:
        account = store.resolve_account(args.name)
        count = len(store.list_devices(account.account_id))
        confirm(
            f"delete account {account.name!r} ({account.account_id}) and its {count} device(s)? "
            "Its devices can no longer reach each other through this server",
            account.name,
            args,
        )
        store.delete_account(account.account_id)
    finally:
        store.close()
    print(f"deleted account {account.name} ({count} device(s))")
    return 0


def add_account_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """``account create|list|passwd|delete`` (each sets ``func``)."""
    p = sub.add_parser("account", help="manage accounts")
    account_sub = p.add_subparsers(dest="account_command", required=True, metavar="ACTION")
    p = account_sub.add_parser("create", parents=[common], help="create an account; prints its id")
    p.add_argument("name")
    p.add_argument("--password-file", default=None, help="read the password from this file")
    p.add_argument("--no-password", action="store_true", help="no web login for this account")
    p.set_defaults(func=cmd_create)
    p = account_sub.add_parser("list", parents=[common], help="list the accounts")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)
    p = account_sub.add_parser("passwd", parents=[common], help="set an account's web password")
    p.add_argument("name", help="account name or id")
    p.add_argument("--password-file", default=None, help="read the password from this file")
    p.set_defaults(func=cmd_passwd)
    p = account_sub.add_parser(
        "delete", parents=[common], help="delete an account with its devices (asks first)"
    )
    p.add_argument("name", help="account name or id")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_delete)
