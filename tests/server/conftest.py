"""Fixtures of the server tests: one real server process per module, two accounts on it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from handoffd.serverclient import JoinResult
from tests.server.helpers import cli_invite, create_account, pair
from tests.support.processes import ServerProcess


@dataclass(frozen=True)
class Seed:
    """An account with one paired device (its key and join result)."""

    name: str
    account_id: str
    key: Ed25519PrivateKey
    result: JoinResult


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("server") / "data"
    proc = ServerProcess(
        data, extra=("--join-failures-per-minute", "1000", "--invites-per-minute", "1000")
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


def _seed(server: ServerProcess, name: str) -> Seed:
    account_id = create_account(server.data, name)
    url, _ = cli_invite(server.data, name)

    async def go() -> tuple[Ed25519PrivateKey, JoinResult]:
        key, result, client = await pair(server, url, name=f"{name}-seed")
        await client.close()
        return key, result

    key, result = asyncio.run(go())
    return Seed(name, account_id, key, result)


@pytest.fixture(scope="module")
def alice(server: ServerProcess) -> Seed:
    return _seed(server, "alice")


@pytest.fixture(scope="module")
def bob(server: ServerProcess) -> Seed:
    return _seed(server, "bob")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
