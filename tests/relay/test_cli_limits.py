"""``handoff-server serve --relay-*``: relay limits from flags, over HANDOFF_RELAY_* (flags win)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from handoffd.errors import ConfigError, TransportError
from handoffd.server import cli
from handoffd.server.relay import RelayConfig
from handoffd.transport.base import Channel
from tests.relay.helpers import Node, Paired, drain, environment, pair_devices, wait_stats
from tests.support.processes import ServerProcess

# More than the default 60 s: servers started with several flag sets, relays opened against each.
pytestmark = pytest.mark.timeout(120)


@dataclass(frozen=True)
class Flagged:
    server: ServerProcess
    devices: list[Paired]


@pytest.fixture(scope="module")
def flagged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flagged]:
    """A real server whose environment allows 5 relays and 60 s idle, its flags 1 and 2 s."""
    base = tmp_path_factory.mktemp("relay-flags")
    env = {"HANDOFF_RELAY_MAX_PER_ACCOUNT": "5", "HANDOFF_RELAY_IDLE_TIMEOUT": "60"}
    with environment(env):
        server = ServerProcess(
            base / "data",
            extra=(
                "--join-failures-per-minute",
                "1000",
                "--relay-max-per-account",
                "1",
                "--relay-idle-timeout",
                "2",
            ),
        ).start()
    try:
        yield Flagged(server, pair_devices(server, "erin", 2))
    finally:
        server.stop()


def deadline(seconds: float = 15.0) -> float:
    return asyncio.get_running_loop().time() + seconds


async def dial(src: Node, dst: Node) -> tuple[Channel, Channel]:
    await src.wait_online(dst.id)
    channel = await src.dialer().dial(dst.id, deadline=deadline())
    return channel, await asyncio.wait_for(dst.channels.get(), 10)


@pytest.mark.asyncio
async def test_max_per_account_flag_refuses_the_extra_relay(flagged: Flagged) -> None:
    async with (
        Node(flagged.server, flagged.devices[0]) as na,
        Node(flagged.server, flagged.devices[1]) as nb,
    ):
        first = await dial(na, nb)
        try:
            with pytest.raises(TransportError) as cap:
                await na.dialer().dial(nb.id, deadline=deadline())
            assert cap.value.code == "relay-too-many"  # the flag's 1, not the environment's 5
        finally:
            for channel in first:
                await channel.close()
        await wait_stats(na.client, active=0, pending=0)

        # The slot is free again; the flag's idle timeout (2 s, not 60) ends the session.
        channel, peer = await dial(na, nb)
        try:
            await channel.send(b"one message, then silence")
            assert await peer.recv() == b"one message, then silence"
            _, end = await drain(peer)
            assert end.code == "relay-idle-timeout"
        finally:
            await channel.close()
            await peer.close()
        await wait_stats(na.client, active=0, pending=0)


def test_flags_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HANDOFF_RELAY_MAX_BYTES", "1000")
    monkeypatch.setenv("HANDOFF_RELAY_MAX_SECONDS", "50")
    monkeypatch.setenv("HANDOFF_RELAY_TOKEN_TTL", "7")
    parser = cli.build_parser()

    env_only = cli.relay_config(parser.parse_args(["serve"]))
    assert (env_only.max_bytes, env_only.max_seconds, env_only.token_ttl) == (1000, 50.0, 7.0)
    assert env_only.max_per_account == RelayConfig().max_per_account

    args = parser.parse_args(
        [
            "serve",
            "--relay-max-bytes",
            "2048",
            "--relay-max-seconds",
            "30.5",
            "--relay-idle-timeout",
            "9",
            "--relay-max-per-account",
            "3",
        ]
    )
    both = cli.relay_config(args)
    assert (both.max_bytes, both.max_seconds, both.idle_timeout, both.max_per_account) == (
        2048,
        30.5,
        9.0,
        3,
    )
    assert both.token_ttl == 7.0  # no flag for it: the environment still decides

    for bad in (["--relay-max-per-account", "0"], ["--relay-idle-timeout", "nan"]):
        with pytest.raises(ConfigError) as e:
            cli.relay_config(parser.parse_args(["serve", *bad]))
        assert e.value.code == "bad-relay-limit"


def test_a_bad_flag_is_one_line_and_nothing_starts(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "handoffd.server.cli", "serve", "--data", str(tmp_path / "d")]
    argv += ["--listen", "127.0.0.1:0", "--relay-max-bytes", "-1"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "handoff-server: error: relay max bytes must be a positive number [bad-relay-limit]"
    ]
    assert not (tmp_path / "d").exists()
