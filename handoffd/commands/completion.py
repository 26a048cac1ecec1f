"""``handoff completion bash|zsh``: a shell completion script generated from the parser (shtab).

Install: ``handoff completion bash > ~/.local/share/bash-completion/completions/handoff``,
or ``handoff completion zsh > ~/.zfunc/_handoff`` (a directory on ``$fpath``).
"""

from __future__ import annotations

import argparse

from handoffd.subcommands import AddCommand

__all__ = ["register", "script"]

SHELLS = ("bash", "zsh")


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of ``parser`` for ``shell``."""
    import shtab

    text: str = shtab.complete(parser, shell=shell)
    return text


def cmd_completion(args: argparse.Namespace) -> int:
    """Print the script for the shell named."""
    print(script(args.root_parser, args.shell))
    return 0


def register(add: AddCommand) -> None:
    """Add ``completion``."""
    p = add("completion", cmd_completion, "print a shell completion script", daemon=False)
    p.add_argument("shell", choices=SHELLS, help="the shell")
