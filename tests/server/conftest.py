"""Fixtures of the server tests: one real server process per module, two accounts on it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from handoffd.serverlink import JoinResult
from tests.server.helpers import ServerProcess, cli_invite, create_account, pair


@dataclass(frozen=True)
class Seed:
    """An account with one paired device (its key and join result)."""

    name: str
    account_id: str
    key: Ed25519PrivateKey
    result: JoinResult


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ServerProcess]:
    """The module's server, on each store back-end in turn (the same tests run on both)."""
    database = None
    if request.param == "postgresql":
        database = request.getfixturevalue("postgres").create_database()
    data = tmp_path_factory.mktemp("server") / "data"
    proc = ServerProcess(
        data,
        extra=("--join-failures-per-minute", "1000", "--invites-per-minute", "1000"),
        database=database,
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
