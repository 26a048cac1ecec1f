"""``handoff-server`` options and the ``migrate`` command for several instances (no Redis import).

``--database`` (every command; ``$HANDOFF_DATABASE``), ``serve --bus``
(``$HANDOFF_BUS``) and ``serve --public-fingerprint``; see docs/server.md,
"Running several instances".
"""

from __future__ import annotations

import argparse
import os

from handoffd.errors import ConfigError
from handoffd.server import pairing
from handoffd.server.store import Store

BUS_ENV = "HANDOFF_BUS"


def add_common_options(common: argparse.ArgumentParser) -> None:
    """``--database`` (on every command)."""
    common.add_argument(
        "--database",
        default=None,
        metavar="URL",
        help="postgresql://... for several instances (default: $HANDOFF_DATABASE, else SQLite)",
    )


def add_serve_options(p: argparse.ArgumentParser) -> None:
    """``serve --bus`` and ``--public-fingerprint``."""
    p.add_argument(
        "--bus",
        default=None,
        metavar="URL",
        help="redis://... joining several instances (default: $HANDOFF_BUS, else in-process)",
    )
    p.add_argument(
        "--public-fingerprint",
        default=None,
        metavar="sha256:HEX",
        help="with --insecure-http behind a TLS proxy: the proxy certificate's pin for invites",
    )


def bus_url(value: str | None) -> str | None:
    """``--bus`` or else ``$HANDOFF_BUS``; None (or empty) means in-process only."""
    url = value if value is not None else os.environ.get(BUS_ENV)
    if not url:
        return None
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("--bus must be a redis:// URL", code="bus-url-invalid")
    return url


def public_fingerprint(args: argparse.Namespace) -> str | None:
    """``--public-fingerprint``: the TLS proxy's pin, only with ``--insecure-http``."""
    if args.public_fingerprint is None:
        return None
    if not args.insecure_http:
        raise ConfigError(
            "--public-fingerprint is for --insecure-http behind a TLS proxy",
            code="public-fingerprint-unused",
        )
    return pairing.check_fingerprint(args.public_fingerprint)


def cmd_migrate(args: argparse.Namespace) -> int:
    """``migrate``: bring the schema up to date (safe while other instances start)."""
    store = Store.open(args.data, database=args.database)
    try:
        print(f"schema version {store.schema_version()} ({store.kind})")  # noqa: T201
    finally:
        store.close()
    return 0
