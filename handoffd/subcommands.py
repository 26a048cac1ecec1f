"""The contract of a ``handoff`` subcommand module: it defines ``register(add: AddCommand)``."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # the CLI imports the client only for commands that talk to the daemon
    from handoffd.control.client import HandoffClient

Command = Callable[["HandoffClient", argparse.Namespace], Awaitable[int]]
LocalCommand = Callable[[argparse.Namespace], int]


class AddCommand(Protocol):
    """Adds one subcommand and returns its parser (for its own arguments)."""

    def __call__(
        self,
        name: str,
        func: Command | LocalCommand,
        help_text: str,
        *,
        listing: bool = False,
        daemon: bool = True,
    ) -> argparse.ArgumentParser: ...
