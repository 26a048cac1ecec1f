"""Real handoff-server processes and CLI runs for the server tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from handoffd import identity
from handoffd.serverlink import JoinResult, ServerClient, parse_invite
from tests.support.processes import DATABASES as DATABASES
from tests.support.processes import READY_PREFIX as READY_PREFIX
from tests.support.processes import ServerProcess as ServerProcess


def cli(data: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``python -m handoffd.server.cli ARGS --data DATA`` (``--database`` if it has one)."""
    argv = [sys.executable, "-m", "handoffd.server.cli", *args, "--data", str(data)]
    if data in DATABASES:
        argv += ["--database", DATABASES[data]]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} failed: {result.stderr}")
    return result


def create_account(data: Path, name: str) -> str:
    """Create an account (no password: faster) and return its id."""
    return cli(data, "account", "create", name, "--no-password").stdout.strip()


def cli_invite(data: Path, account: str, *extra: str) -> tuple[str, str]:
    """Make an invite with the CLI; return (url, code)."""
    out = cli(data, "invite", account, "--no-qr", *extra).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return fields["url"].strip(), fields["code"].strip()


async def pair(
    server: ServerProcess, invite_text: str, name: str = "laptop"
) -> tuple[Ed25519PrivateKey, JoinResult, ServerClient]:
    """Join with a fresh key; return the key, the result and a device client (caller closes it)."""
    invite = parse_invite(invite_text, server_url=server.url, fingerprint=server.fingerprint)
    key = identity.generate_device_key()
    async with ServerClient(invite.server_url, fingerprint=invite.fingerprint) as joiner:
        result = await joiner.join(invite, key=key, name=name, platform="linux")
    return key, result, server.client(key, result)


async def new_device(
    server: ServerProcess, key: Ed25519PrivateKey, result: JoinResult, name: str
) -> tuple[Ed25519PrivateKey, JoinResult, ServerClient]:
    """Another device of the account of the device (``key``, ``result``): it makes an invite
    over the API, a fresh key joins with it."""
    async with server.client(key, result) as client:
        url = (await client.create_invite()).url
    return await pair(server, url, name=name)
