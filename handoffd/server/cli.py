"""``handoff-server``: serve, account create, invite, devices, revoke.

``serve`` prints one machine-readable line on stdout once it listens::

    handoff-server listening url=https://127.0.0.1:8443 fingerprint=sha256:<hex>

(``fingerprint=none`` with ``--insecure-http``); logs go to stderr, one
``key=value`` line per event. The data directory is ``--data DIR``, else
``$STATE_DIRECTORY`` (set by systemd), else the platform's user data dir.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import platformdirs
from aiohttp import web

from handoffd import __version__, identity, logfmt, netguard, ownership
from handoffd.errors import ConfigError, HandoffError
from handoffd.server import admin, listener, pairing, scaleopts, tlscert
from handoffd.server.app import HUB, ServerConfig, make_app
from handoffd.server.ice import DEFAULT_TTL, IceConfig, read_secret_file
from handoffd.server.ratelimit import TrustedProxies
from handoffd.server.relay import RelayConfig
from handoffd.server.store import Store

logger = logging.getLogger("handoffd.server")

DEFAULT_LISTEN = "0.0.0.0:8443"
KeyValueFormatter = logfmt.KeyValueFormatter  # the one log format (daemon and server)
setup_logging = logfmt.setup_logging


def default_data_dir() -> Path:
    """``$STATE_DIRECTORY`` (systemd; its first entry) or the platform's user data dir."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0])
    return Path(platformdirs.user_data_dir("handoff-server", appauthor=False))


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 in brackets) → (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise HandoffError(f"--listen must be HOST:PORT, not {text!r}", code="bad-listen")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - ":8443" means every interface
    return host, int(port_text)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - naming the wildcard, not binding it
        host = socket.getfqdn()
    return f"[{host}]" if ":" in host else host


# ---------------------------------------------------------------- serve


def ice_config(args: argparse.Namespace) -> IceConfig:
    """``--stun``, ``--turn``, ``--turn-secret-file``, ``--turn-ttl`` → IceConfig (ConfigError)."""
    secret = read_secret_file(Path(args.turn_secret_file)) if args.turn_secret_file else None
    return IceConfig(stun=tuple(args.stun), turn=tuple(args.turn), secret=secret, ttl=args.turn_ttl)


def relay_config(args: argparse.Namespace) -> RelayConfig:
    """``HANDOFF_RELAY_*``, then ``--relay-*`` options on top (flags win) → RelayConfig."""
    try:
        return RelayConfig.from_env().with_limits(
            idle_timeout=args.relay_idle_timeout,
            max_bytes=args.relay_max_bytes,
            max_seconds=args.relay_max_seconds,
            max_per_account=args.relay_max_per_account,
        )
    except ValueError as exc:
        raise ConfigError(str(exc), code="bad-relay-limit") from None


async def serve(args: argparse.Namespace) -> int:
    """Run the server until SIGTERM/SIGINT."""
    data_dir: Path = args.data
    host, port = parse_listen(args.listen)
    ice = ice_config(args)  # before anything is created: a bad option changes nothing
    TrustedProxies.parse(args.trusted_proxy)
    relay = relay_config(args)
    bus = scaleopts.bus_url(args.bus)
    listen = listener.from_args(args)
    # 0700, ours, not writable by others (data-dir-unsafe); its parents are the admin's choice.
    ownership.ensure_private_dir(data_dir, above=False, code="data-dir-unsafe")
    soft, hard = netguard.raise_nofile_limit()
    logger.info("descriptor limit soft=%d hard=%d", soft, hard)
    now = time.time()
    tls = (
        None
        if args.insecure_http
        else tlscert.load_or_create(
            data_dir, now=dt.datetime.fromtimestamp(now, dt.UTC), extra_hosts=[host]
        )
    )
    scheme = "http" if tls is None else "https"
    fingerprint = tls.fingerprint if tls is not None else scaleopts.public_fingerprint(args)
    store = Store.open(data_dir, database=args.database)
    try:
        config = ServerConfig(
            data_dir=data_dir,
            public_url=pairing.check_server_url(args.public_url) if args.public_url else None,
            fingerprint=fingerprint,
            invite_ttl=args.invite_ttl,
            join_failures_per_minute=args.join_failures_per_minute,
            join_failure_burst=max(1, int(args.join_failures_per_minute)),
            trusted_proxies=tuple(args.trusted_proxy),
            login_name_per_minute=args.login_name_per_minute,
            login_address_per_minute=args.login_address_per_minute,
            invites_per_minute=args.invites_per_minute,
            ice=ice,
            relay=relay,
            bus=bus,
        )
        app = make_app(store, config)
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=5.0,
            **listener.runner_options(listen),
        )
        await runner.setup()
        try:
            ssl_context = None if tls is None else tls.ssl_context()
            await listener.start(runner, host, port, listen, ssl_context)
            bound_port = int(runner.addresses[0][1])
            url = config.public_url or f"{scheme}://{_url_host(host)}:{bound_port}"
            await asyncio.to_thread(store.set_meta, "public_url", url)
            await asyncio.to_thread(store.set_meta, "scheme", scheme)
            await asyncio.to_thread(store.set_meta, "public_fingerprint", fingerprint or "")
            listen_url = f"{scheme}://{host if ':' not in host else f'[{host}]'}:{bound_port}"
            if (joined := app[HUB].bus) is not None:  # bus: other instances pipe relay joins here
                joined.internal_url = listen_url
            logger.info(
                "server listening url=%s fingerprint=%s data=%s",
                listen_url,
                fingerprint or "none",
                data_dir,
            )
            if ice.configured:
                logger.info(
                    "ice servers stun=%d turn=%d turn_ttl=%d",
                    len(ice.stun),
                    len(ice.turn),
                    ice.ttl,
                )
            print(
                f"handoff-server listening url={listen_url} fingerprint={fingerprint or 'none'}",
                flush=True,
            )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            await stop.wait()
            logger.info("server stopping")
        finally:
            await runner.cleanup()
    finally:
        store.close()
    logger.info("server stopped")
    return 0


# ---------------------------------------------------------------- admin commands


def cmd_invite(args: argparse.Namespace) -> int:
    """``invite ACCOUNT``: QR in the terminal, code, URL, expiry."""
    store = Store.open(args.data, database=args.database)
    try:
        server_url = args.server_url or store.get_meta("public_url")
        if not server_url:
            raise HandoffError(
                "the server's URL is unknown: start `serve` once or pass --server-url",
                code="server-url-unknown",
            )
        server_url = pairing.check_server_url(server_url)
        fingerprint = (
            (store.get_meta("public_fingerprint") or tlscert.read_fingerprint(args.data))
            if server_url.startswith("https:")
            else None
        )
        account = store.resolve_account(args.account)
        invite = store.create_invite(account.account_id, created_by="cli", ttl=args.ttl)
    finally:
        store.close()
    view = pairing.present(server_url, fingerprint, invite.secrets, invite.expires_at)
    if not args.no_qr:
        pairing.qr_terminal(view.qr_url, sys.stdout)
    print(f"pair:    {view.command}")
    print(f"code:    {view.code}")
    print(f"url:     {view.url}")
    if view.page_url:
        print(f"page:    {view.page_url}")
    print(f"expires: {pairing.expiry_text(view.expires_at, time.time())}")
    print("on the new device, run the `pair` line above, or scan the QR code")
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    """``devices ACCOUNT [--json]``."""
    store = Store.open(args.data, database=args.database)
    try:
        account = store.resolve_account(args.account)
        devices = store.list_devices(account.account_id)
    finally:
        store.close()
    rows = [
        {
            "device_id": d.device_id,
            "name": d.name,
            "platform": d.platform,
            "revoked": d.revoked,
            "created_at": d.created_at,
            "last_seen": d.last_seen,
            "cert_not_after": d.cert_not_after,
        }
        for d in devices
    ]
    if args.json:
        print(json.dumps({"account_id": account.account_id, "devices": rows}, indent=2))
        return 0
    if not rows:
        print(f"no devices in {account.name}")
        return 0
    for d in devices:
        state = "revoked" if d.revoked else "active"
        seen = (
            dt.datetime.fromtimestamp(d.last_seen).astimezone().isoformat(timespec="seconds")
            if d.last_seen
            else "never"
        )
        print(
            f"{identity.format_device_id(d.device_id)}  {d.name!r}  {d.platform}  {state}  "
            f"last seen {seen}"
        )
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    """``revoke ACCOUNT DEVICE`` (a device id, or a unique device name)."""
    store = Store.open(args.data, database=args.database)
    try:
        account = store.resolve_account(args.account)
        devices = store.list_devices(account.account_id)
        try:
            wanted = identity.parse_device_id(args.device)
            matches = [d for d in devices if d.device_id == wanted]
        except HandoffError:
            matches = [d for d in devices if d.name == args.device]
        if len(matches) != 1:
            raise HandoffError(
                f"no single device {args.device!r:.80} in {account.name}",
                code="device-unknown",
            )
        crl = store.revoke_device(account.account_id, matches[0].device_id)
    finally:
        store.close()
    print(f"revoked {matches[0].device_id}; CRL number {identity.crl_number(crl)}")
    return 0


# ---------------------------------------------------------------- argv


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``--data`` on every command)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data",
        type=Path,
        default=None,
        help="data directory (default: $STATE_DIRECTORY or platformdirs)",
    )
    scaleopts.add_common_options(common)
    parser = argparse.ArgumentParser(
        prog="handoff-server", description="handoff authorization server"
    )
    parser.add_argument("--version", action="version", version=f"handoff-server {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", parents=[common], help="run the server")
    p.add_argument("--listen", default=DEFAULT_LISTEN, help="HOST:PORT (port 0: any free port)")
    p.add_argument(
        "--insecure-http",
        action="store_true",
        help="plain HTTP: only behind a TLS proxy, or in tests",
    )
    p.add_argument("--public-url", default=None, help="URL devices use to reach the server")
    scaleopts.add_serve_options(p)
    p.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="ADDR",
        help="reverse proxy (address or network) whose X-Forwarded-For is believed (repeatable)",
    )
    p.add_argument(
        "--stun",
        action="append",
        default=[],
        metavar="URL",
        help="STUN server for devices, e.g. stun:stun.example.org:3478 (repeatable)",
    )
    p.add_argument(
        "--turn",
        action="append",
        default=[],
        metavar="URL",
        help="TURN server for devices, e.g. turn:turn.example.org:3478?transport=udp (repeatable)",
    )
    p.add_argument(
        "--turn-secret-file",
        default=None,
        metavar="PATH",
        help="file with the secret shared with coturn (its static-auth-secret); mode 0600",
    )
    p.add_argument(
        "--turn-ttl",
        type=int,
        default=DEFAULT_TTL,
        metavar="SECONDS",
        help=f"lifetime of the TURN credentials handed out (default {DEFAULT_TTL})",
    )
    relay = RelayConfig()
    p.add_argument(
        "--relay-idle-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"end a relay session idle this long (default {relay.idle_timeout:g})",
    )
    p.add_argument(
        "--relay-max-bytes",
        type=int,
        default=None,
        metavar="BYTES",
        help=f"bytes per relay session, both ways (default {relay.max_bytes})",
    )
    p.add_argument(
        "--relay-max-seconds",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"lifetime of a relay session (default {relay.max_seconds:g})",
    )
    p.add_argument(
        "--relay-max-per-account",
        type=int,
        default=None,
        metavar="N",
        help=f"relay sessions per account, pending and active (default {relay.max_per_account})",
    )
    listener.add_arguments(p)
    p.add_argument("--invite-ttl", type=float, default=pairing.INVITE_TTL, help=argparse.SUPPRESS)
    p.add_argument("--join-failures-per-minute", type=float, default=10.0, help=argparse.SUPPRESS)
    p.add_argument("--login-name-per-minute", type=float, default=5.0, help=argparse.SUPPRESS)
    p.add_argument("--login-address-per-minute", type=float, default=10.0, help=argparse.SUPPRESS)
    p.add_argument("--invites-per-minute", type=float, default=6.0, help=argparse.SUPPRESS)

    sub.add_parser("migrate", parents=[common], help="create or upgrade the schema, then exit")

    admin.add_account_commands(sub, common)

    p = sub.add_parser("invite", parents=[common], help="make a pairing invite")
    p.add_argument("account", help="account name or id")
    p.add_argument("--server-url", default=None, help="URL put into the invite")
    p.add_argument("--no-qr", action="store_true", help="do not print the QR code")
    p.add_argument("--ttl", type=float, default=pairing.INVITE_TTL, help=argparse.SUPPRESS)

    p = sub.add_parser("devices", parents=[common], help="list an account's devices")
    p.add_argument("account", help="account name or id")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("revoke", parents=[common], help="revoke a device")
    p.add_argument("account", help="account name or id")
    p.add_argument("device", help="device id or name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``handoff-server`` console script."""
    args = build_parser().parse_args(argv)
    if args.data is None:
        args.data = default_data_dir()
    setup_logging()
    try:
        if args.command == "serve":
            return asyncio.run(serve(args))
        if args.command == "account":
            result: int = args.func(args)
            return result
        commands = {
            "invite": cmd_invite,
            "devices": cmd_devices,
            "revoke": cmd_revoke,
            "migrate": scaleopts.cmd_migrate,
        }
        return commands[args.command](args)
    except HandoffError as exc:
        print(f"handoff-server: error: {exc.message} [{exc.code}]", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"handoff-server: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
