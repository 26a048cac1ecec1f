"""Issue #16 regressions against a real handoff-server process: logins, limiters, invites.

Clients come from distinct loopback source addresses (127.0.0.x) where a test
needs several client addresses; behind-a-proxy cases send X-Forwarded-For.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from handoffd.errors import ServerError
from handoffd.server import pairing
from handoffd.serverlink import RelayTicket
from tests.relay.helpers import environment
from tests.server.helpers import cli, cli_invite, create_account, pair
from tests.support.processes import ServerProcess

DEADLINE = 60.0
_CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


def _account_with_password(data: Path, name: str, password: str) -> None:
    secret = data.parent / f"{name}.password"
    secret.write_text(password + "\n")
    cli(data, "account", "create", name, "--password-file", str(secret))


def _server(tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> ServerProcess:
    with environment(env or {}):
        return ServerProcess(tmp_path / "data", extra=("--insecure-http", *extra)).start()


@pytest.fixture
def started() -> Iterator[list[ServerProcess]]:
    procs: list[ServerProcess] = []
    yield procs
    for proc in procs:
        proc.stop()


def _session(source: str = "127.0.0.1", *, cookies: bool = True) -> aiohttp.ClientSession:
    # 48 connections at once: many more than any limiter's burst, fewer than the listener's
    # per-address cap (64), which would reset the rest before they reach the limiter.
    connector = aiohttp.TCPConnector(local_addr=(source, 0), limit=48, force_close=True)
    jar = aiohttp.CookieJar(unsafe=True) if cookies else aiohttp.DummyCookieJar()
    return aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=DEADLINE), cookie_jar=jar
    )


async def _login(
    url: str,
    account: str,
    password: str,
    *,
    source: str = "127.0.0.1",
    headers: dict[str, str] | None = None,
) -> int:
    """One web login (GET the form, POST it) from ``source``; the POST's status."""
    async with _session(source) as http:
        async with http.get(f"{url}/login", headers=headers) as resp:
            token = _CSRF_RE.search(await resp.text())
        assert token is not None
        form = {"csrf": token.group(1), "account": account, "password": password}
        async with http.post(
            f"{url}/login", data=form, headers=headers, allow_redirects=False
        ) as resp:
            await resp.read()
            return resp.status


# ---------------------------------------------------------------- finding 1


@pytest.mark.asyncio
@pytest.mark.timeout(300)  # Argon2id logins and bursts against a real server: slow on 2 cores
async def test_concurrent_logins_leave_the_server_answering(
    tmp_path: Path, started: list[ServerProcess]
) -> None:
    """16 logins at once (right and wrong passwords): no 5xx but 503 busy; then pairing,
    signed device requests and SIGTERM still work (before: Argon2id deadlocked every worker)."""
    data = tmp_path / "data"
    names = [f"user{i}" for i in range(4)]
    for name in names:
        _account_with_password(data, name, f"right-{name}")
    server = _server(tmp_path)
    started.append(server)

    async def one(i: int) -> tuple[bool, int]:
        name, right = names[i % 4], i % 2 == 0
        password = f"right-{name}" if right else "wrong-password"
        return right, await _login(server.url, name, password, source=f"127.0.0.{10 + i}")

    results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(16))), DEADLINE)
    for right, status in results:
        assert status in ((303, 503) if right else (401, 503)), results
    assert any(status != 503 for _, status in results), results  # some were checked

    # The server still answers: a new device pairs, and signs a request, in time.
    url, _ = cli_invite(data, names[0])

    async def still_serving() -> None:
        _, _, client = await pair(server, url, name="after-logins")
        try:
            devices = await client.devices()
            assert [d.name for d in devices] == ["after-logins"]
        finally:
            await client.close()

    await asyncio.wait_for(still_serving(), DEADLINE)
    assert await _login(server.url, names[1], f"right-{names[1]}", source="127.0.0.99") == 303
    proc = server.proc
    assert proc is not None
    server.stop()
    assert proc.returncode == 0  # stopped by SIGTERM, not killed


# ---------------------------------------------------------------- finding 6


@pytest.mark.asyncio
@pytest.mark.timeout(300)  # Argon2id logins and bursts against a real server: slow on 2 cores
async def test_concurrent_wrong_codes_are_evaluated_at_most_burst_times(
    tmp_path: Path, started: list[ServerProcess]
) -> None:
    """120 wrong short codes at once from one address: at most the burst (10) reach the store."""
    data = tmp_path / "data"
    create_account(data, "alice")
    # No connection cap: this is about the limiter, not the listener (tests/server/test_listener.py).
    server = _server(
        tmp_path, "--join-failures-per-minute", "10", "--max-connections-per-address", "0"
    )
    started.append(server)

    async def guess(http: aiohttp.ClientSession) -> int:
        code = "".join(secrets.choice(pairing.CODE_ALPHABET) for _ in range(pairing.CODE_LEN))
        body = {"code": code, "csr": "x", "name": "n", "platform": "linux"}
        async with http.post(f"{server.url}/v1/join", json=body) as resp:
            await resp.read()
            return resp.status

    async with _session() as http:
        statuses = Counter(await asyncio.gather(*(guess(http) for _ in range(120))))
    assert set(statuses) <= {403, 429}, statuses
    assert statuses[403] <= 10, statuses
    assert statuses[429] >= 110, statuses


@pytest.mark.asyncio
@pytest.mark.timeout(300)  # Argon2id logins and bursts against a real server: slow on 2 cores
async def test_concurrent_bad_relay_joins_are_evaluated_at_most_burst_times(
    tmp_path: Path, started: list[ServerProcess]
) -> None:
    """40 relay joins with made-up sessions at once: at most the burst (5) are evaluated."""
    data = tmp_path / "data"
    create_account(data, "alice")
    server = _server(tmp_path, env={"HANDOFF_RELAY_JOIN_FAILURES_PER_MINUTE": "5"})
    started.append(server)
    url, _ = cli_invite(data, "alice")
    _, _, client = await pair(server, url)

    async def bad_join() -> str:
        ticket = RelayTicket(
            session=secrets.token_urlsafe(16),
            token=secrets.token_urlsafe(32),
            peer="x",
            expires_in=60.0,
            initiator=True,
        )
        with pytest.raises(ServerError) as refused:
            await client.relay_stream(ticket, deadline=asyncio.get_running_loop().time() + 50)
        return refused.value.code

    try:
        codes = Counter(
            await asyncio.wait_for(asyncio.gather(*(bad_join() for _ in range(40))), DEADLINE)
        )
    finally:
        await client.close()
    evaluated = sum(n for code, n in codes.items() if code != "rate-limited")
    assert evaluated <= 5, codes
    assert codes["rate-limited"] >= 35, codes


# ---------------------------------------------------------------- finding 7


@pytest.mark.asyncio
@pytest.mark.timeout(600)  # 10,050 junk-name logins against a real server
async def test_junk_names_do_not_reset_an_accounts_login_limit(
    tmp_path: Path, started: list[ServerProcess]
) -> None:
    """The victim's per-account bucket survives 10,050 junk names; the right password is
    still refused while it is empty (before: the LRU evicted it and let guessing go on)."""
    data = tmp_path / "data"
    _account_with_password(data, "victim", "right-password")
    # A per-account refill of one attempt per 100 minutes: none comes back during the test.
    server = _server(tmp_path, "--login-name-per-minute", "0.01")
    started.append(server)
    statuses = [
        await _login(server.url, "victim", f"guess-{i}", source="127.0.0.2") for i in range(6)
    ]
    assert statuses == [401] * 5 + [429]

    async with _session("127.0.0.3", cookies=False) as http:
        async with http.get(f"{server.url}/login") as resp:
            token = _CSRF_RE.search(await resp.text())
            nonce = resp.cookies["handoff_login"].value
        assert token is not None
        # Every answer sets a new form cookie: keep sending the one the token was made for.
        cookie = {"Cookie": f"handoff_login={nonce}"}
        gate = asyncio.Semaphore(32)

        async def junk(i: int) -> int:
            form = {"csrf": token.group(1), "account": f"junk{i}", "password": "x"}
            async with (
                gate,
                http.post(
                    f"{server.url}/login", data=form, headers=cookie, allow_redirects=False
                ) as resp,
            ):
                await resp.read()
                return resp.status

        junk_statuses = Counter(await asyncio.gather(*(junk(i) for i in range(10_050))))
    assert set(junk_statuses) <= {401, 429, 503}, junk_statuses
    assert junk_statuses[429] >= 10_000, junk_statuses

    # A fresh address with the right password: the account's bucket is still empty.
    assert await _login(server.url, "victim", "right-password", source="127.0.0.4") == 429


@pytest.mark.asyncio
@pytest.mark.timeout(300)  # Argon2id logins and bursts against a real server: slow on 2 cores
async def test_trusted_proxy_forwarded_clients_and_ipv6_by_64(
    tmp_path: Path, started: list[ServerProcess]
) -> None:
    """Behind --trusted-proxy, each forwarded client has its own address bucket (an IPv6 /64
    shares one); a peer that is not the proxy cannot choose its address by header."""
    # No refill during the test (each login costs a hash; on a loaded machine 11 of them took
    # longer than the 6 s in which the default rate gives a token back).
    server = _server(tmp_path, "--trusted-proxy", "127.0.0.1", "--login-address-per-minute", "0.01")
    started.append(server)

    names = (f"nobody{i}" for i in range(1000))  # a new name each time: only addresses limit

    async def attempts(source: str, forwarded: str | None, count: int) -> list[int]:
        headers = {"X-Forwarded-For": forwarded} if forwarded else None
        return [
            await _login(server.url, next(names), "x", source=source, headers=headers)
            for _ in range(count)
        ]

    # One client behind the proxy spends its 10 tokens; the proxy's next client is not affected.
    assert await attempts("127.0.0.1", "198.51.100.7", 11) == [401] * 10 + [429]
    assert await attempts("127.0.0.1", "203.0.113.9", 1) == [401]
    # The right-most untrusted hop counts, not what the client wrote on the left.
    assert await attempts("127.0.0.1", "203.0.113.50, 198.51.100.7", 1) == [429]
    # Addresses in one IPv6 /64 share a bucket; another /64 has its own.
    v6 = [await attempts("127.0.0.1", f"2001:db8:0:1::{i:x}", 1) for i in range(1, 12)]
    assert [s for (s,) in v6] == [401] * 10 + [429]
    assert await attempts("127.0.0.1", "2001:db8:0:2::1", 1) == [401]
    # A peer that is not the trusted proxy is keyed by its own address, whatever it sends.
    assert await attempts("127.0.0.5", "192.0.2.1", 10) == [401] * 10
    assert await attempts("127.0.0.5", "192.0.2.2", 1) == [429]


# ---------------------------------------------------------------- finding 13: invites


def _expired_unused(server: ServerProcess) -> int:
    db = sqlite3.connect(server.data / "server.db", timeout=10)
    try:
        sql = "SELECT COUNT(*) FROM invites WHERE used_at IS NULL AND expires_at <= ?"
        return int(db.execute(sql, (time.time(),)).fetchone()[0])
    finally:
        db.close()


@pytest.mark.asyncio
@pytest.mark.timeout(300)  # Argon2id logins and bursts against a real server: slow on 2 cores
async def test_expired_invites_are_purged_and_creation_is_rate_limited(
    tmp_path: Path, started: list[ServerProcess]
) -> None:
    """Expired unused invites are deleted when one is made; a device (and a web session)
    gets invite-rate-limited with Retry-After after its burst (before: 18 a second)."""
    data = tmp_path / "data"
    _account_with_password(data, "alice", "right-password")
    server = _server(tmp_path)
    started.append(server)
    url, _ = cli_invite(data, "alice")
    _, _, client = await pair(server, url)
    try:
        for _ in range(3):
            cli_invite(data, "alice", "--ttl", "1")
        await asyncio.sleep(1.5)
        assert _expired_unused(server) >= 1  # at least the last one: nothing was made since
        codes = []
        for _ in range(8):
            try:
                await client.create_invite()
                codes.append("ok")
            except ServerError as exc:
                codes.append(exc.code)
    finally:
        await client.close()
    assert codes == ["ok"] * 5 + ["invite-rate-limited"] * 3
    assert _expired_unused(server) == 0  # purged when the next one was made
    assert server.counts()["invites"] == 1 + 5  # the used one and the five just made

    async with _session() as http:
        async with http.get(f"{server.url}/login") as resp:
            token = _CSRF_RE.search(await resp.text())
        assert token is not None
        form = {"csrf": token.group(1), "account": "alice", "password": "right-password"}
        async with http.post(f"{server.url}/login", data=form, allow_redirects=False) as resp:
            assert resp.status == 303
        pages = []
        for _ in range(6):
            async with http.get(f"{server.url}/add-device", allow_redirects=False) as resp:
                await resp.read()
                pages.append((resp.status, resp.headers.get("Retry-After")))
    # The account's bucket (10) has 5 left after the device's 5: the web session gets those.
    assert [s for s, _ in pages] == [200] * 5 + [429], pages
    retry_after = pages[-1][1]
    assert retry_after is not None
    assert int(retry_after) >= 1


def test_trusted_proxy_option_is_checked(tmp_path: Path) -> None:
    argv = ["serve", "--insecure-http", "--listen", "127.0.0.1:0", "--trusted-proxy", "nope"]
    result = cli(tmp_path / "data", *argv, check=False)
    assert result.returncode != 0
    assert "trusted-proxy" in result.stderr
