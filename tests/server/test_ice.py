"""STUN/TURN servers advertised by a real handoff-server process: ``GET /v1/ice``, options, refusals."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yarl
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from handoffd import identity
from handoffd.errors import ConfigError, ServerError
from handoffd.server.ice import IceConfig, turn_credential
from handoffd.serverlink import IceServerInfo, ServerClient
from handoffd.wire import auth
from handoffd.wire.ice import check_ice_response, parse_ice_url
from tests.server.conftest import Seed
from tests.server.helpers import cli, cli_invite, create_account, pair
from tests.support.processes import ServerProcess

# More than the default 60 s: each case starts and stops real server processes.
pytestmark = pytest.mark.timeout(120)

SECRET = b"4f1c0d6e9a8b7c6d5e4f3a2b1c0d9e8f"
STUN = ("stun:198.18.0.9:3478", "stun:stun.example.org")
TURN = ("turn:198.18.0.9:3478?transport=udp", "turns:turn.example.org:5349?transport=tcp")
TTL = 900


def _secret_file(directory: Path, secret: bytes = SECRET, mode: int = 0o600) -> Path:
    path = directory / "turn-secret"
    path.write_bytes(secret + b"\n")
    path.chmod(mode)
    return path


@pytest.fixture(scope="module")
def ice_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with two STUN and two TURN URLs, a secret and a 900 s TTL."""
    root = tmp_path_factory.mktemp("ice")
    secret = _secret_file(root)
    extra: list[str] = []
    for url in STUN:
        extra += ["--stun", url]
    for url in TURN:
        extra += ["--turn", url]
    extra += ["--turn-secret-file", str(secret), "--turn-ttl", str(TTL)]
    proc = ServerProcess(root / "data", extra=tuple(extra)).start()
    try:
        yield proc
    finally:
        proc.stop()


@dataclass(frozen=True)
class Paired:
    """A paired device: its account, id, key and client."""

    account_id: str
    device_id: str
    key: Ed25519PrivateKey
    client: ServerClient


@pytest_asyncio.fixture
async def device(ice_server: ServerProcess) -> AsyncIterator[Paired]:
    """A freshly paired device of a new account on ``ice_server``."""
    account_id = create_account(ice_server.data, f"acct{time.monotonic_ns()}")
    url, _ = cli_invite(ice_server.data, account_id)
    key, result, client = await pair(ice_server, url, name="phone")
    try:
        yield Paired(account_id, result.device_id, key, client)
    finally:
        await client.close()


async def _raw_get(server: ServerProcess, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    pin = None
    if server.fingerprint is not None:
        pin = aiohttp.Fingerprint(bytes.fromhex(server.fingerprint[len("sha256:") :]))
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            yarl.URL(server.url + path, encoded=True),
            headers=headers,
            ssl=pin if pin is not None else True,
            timeout=aiohttp.ClientTimeout(total=20),
        ) as resp,
    ):
        return resp.status, json.loads(await resp.read())


def _expected_credential(username: str) -> str:
    """HMAC-SHA1 with the standard library: independent of the server's code path."""
    return base64.b64encode(hmac.new(SECRET, username.encode(), hashlib.sha1).digest()).decode()


# ---------------------------------------------------------------- the endpoint


@pytest.mark.asyncio
async def test_ice_servers_and_turn_credentials(ice_server: ServerProcess, device: Paired) -> None:
    device_id, client = device.device_id, device.client
    before = time.time()
    servers, expires = await client.ice_servers()
    after = time.time()
    assert [s.urls for s in servers] == [STUN, TURN]
    stun, turn = servers
    assert (stun.username, stun.credential) == (None, None)
    assert turn.username is not None
    assert turn.credential is not None
    stamp, _, user = turn.username.partition(":")
    assert user == device_id
    # The expiry is now + TTL, on the server's clock (the same machine here) and ours.
    assert int(before) + TTL <= int(stamp) <= int(after) + TTL
    assert before + TTL <= expires <= after + TTL
    assert turn.credential == _expected_credential(turn.username)
    # The raw answer has exactly the documented shape.
    headers = auth.sign_request(device.key, "GET", "/v1/ice", b"", now=time.time())
    status, body = await _raw_get(ice_server, "/v1/ice", headers)
    assert status == 200
    assert body["ttl"] == TTL
    assert body["ice_servers"][0] == {"urls": list(STUN)}
    assert set(body["ice_servers"][1]) == {"urls", "username", "credential"}
    # /v1/info says ICE servers are configured; the secret is in no answer.
    info = await client.info()
    assert info["ice"] is True
    assert SECRET.decode() not in json.dumps(body) + json.dumps(info)


@pytest.mark.asyncio
async def test_unsigned_and_forged_requests_are_refused(
    ice_server: ServerProcess, device: Paired
) -> None:
    status, body = await _raw_get(ice_server, "/v1/ice", {})
    assert (status, body["error"]["code"]) == (401, "auth-missing")
    # Signed by another key for this device's id.
    headers = auth.sign_request(
        identity.generate_device_key(), "GET", "/v1/ice", b"", now=time.time()
    )
    headers["X-Handoff-Device"] = device.device_id
    status, body = await _raw_get(ice_server, "/v1/ice", headers)
    assert (status, body["error"]["code"]) == (401, "auth-invalid")
    # A signature over another path does not work for /v1/ice.
    headers = auth.sign_request(device.key, "GET", "/v1/devices", b"", now=time.time())
    status, body = await _raw_get(ice_server, "/v1/ice", headers)
    assert (status, body["error"]["code"]) == (401, "auth-invalid")
    assert "ice_servers" not in body


@pytest.mark.asyncio
async def test_revoked_device_gets_no_credentials(
    ice_server: ServerProcess, device: Paired
) -> None:
    servers, _ = await device.client.ice_servers()
    assert servers  # it worked before
    cli(ice_server.data, "revoke", device.account_id, device.device_id)
    with pytest.raises(ServerError) as e:
        await device.client.ice_servers()
    assert (e.value.code, e.value.status) == ("device-revoked", 403)


@pytest.mark.asyncio
async def test_nothing_configured_gives_an_empty_list(server: ServerProcess, alice: Seed) -> None:
    async with server.client(alice.key, alice.result) as client:
        before = time.time()
        servers, expires = await client.ice_servers()
        assert servers == ()
        assert expires >= before
        assert (await client.info())["ice"] is False
        headers = auth.sign_request(alice.key, "GET", "/v1/ice", b"", now=time.time())
        status, body = await _raw_get(server, "/v1/ice", headers)
        assert status == 200
        assert body == {"ice_servers": [], "ttl": 3600}


# ---------------------------------------------------------------- refused at start


def _serve(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [
        sys.executable,
        "-m",
        "handoffd.server.cli",
        "serve",
        "--data",
        str(data),
        "--listen",
        "127.0.0.1:0",
        *args,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


TURN_URL = "turn:198.18.0.9:3478?transport=udp"


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--turn", TURN_URL], "turn-secret-missing", "--turn-secret-file"),
        (["--stun", "stun://198.18.0.9:3478"], "ice-url-invalid", "no '//'"),
        (["--stun", "http://198.18.0.9"], "ice-url-invalid", "stun:, turn: or turns:"),
        (["--stun", "stun:198.18.0.9:0"], "ice-url-invalid", "port"),
        (["--stun", "stun:198.18.0.9:65536"], "ice-url-invalid", "port"),
        (["--stun", "stun:198.18.0.300"], "ice-url-invalid", "IPv4"),
        (["--stun", "stun:[::1]:3478"], "ice-url-invalid", "IPv6"),
        (["--stun", "stun:bad_host.example"], "ice-url-invalid", "host name"),
        (["--stun", "stun::3478"], "ice-url-invalid", "no host"),
        (["--stun", TURN_URL], "ice-url-invalid", "stun: URL for --stun"),
        (["--turn", "stun:198.18.0.9", "SECRET"], "ice-url-invalid", "turn(s): URL for --turn"),
        (["--turn", "turn:198.18.0.9?transport=sctp", "SECRET"], "ice-url-invalid", "transport"),
        (["--turn", "turns:198.18.0.9?transport=udp", "SECRET"], "ice-url-invalid", "TCP only"),
        (["--turn", TURN_URL, "--turn-ttl", "10", "SECRET"], "turn-ttl-invalid", "60 to 86400"),
        (["SECRET"], "turn-secret-unused", "without --turn"),
        (["--turn", TURN_URL, "SECRET:0644"], "turn-secret-permissions", "chmod 600"),
        (["--turn", TURN_URL, "SECRET:0640"], "turn-secret-permissions", "chmod 600"),
        (["--turn", TURN_URL, "SHORT"], "turn-secret-malformed", "openssl rand"),
        (["--turn", TURN_URL, "MISSING"], "turn-secret-missing", "no TURN secret file"),
        ([*["--stun", "stun:198.18.0.9"] * 2], "ice-url-invalid", "twice"),
        (
            [arg for i in range(5) for arg in ("--stun", f"stun:198.18.0.{i + 1}")],
            "ice-too-many-urls",
            "at most 4",
        ),
    ],
)
def test_bad_configuration_is_refused_at_start(
    tmp_path: Path, args: list[str], code: str, says: str
) -> None:
    argv: list[str] = []
    for arg in args:
        if arg.startswith("SECRET"):
            mode = int(arg.partition(":")[2] or "0600", 8)
            argv += ["--turn-secret-file", str(_secret_file(tmp_path, mode=mode))]
        elif arg == "SHORT":
            argv += ["--turn-secret-file", str(_secret_file(tmp_path, secret=b"tooshort"))]
        elif arg == "MISSING":
            argv += ["--turn-secret-file", str(tmp_path / "absent")]
        else:
            argv.append(arg)
    data = tmp_path / "data"
    result = _serve(data, *argv)
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""  # never listened
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("handoff-server: error: ")
    assert lines[0].endswith(f"[{code}]")
    assert says in lines[0]
    assert SECRET.decode() not in result.stderr
    assert not data.exists()  # refused before anything was created


# ---------------------------------------------------------------- pieces


def test_parse_ice_url() -> None:
    url = parse_ice_url("turn:turn.example.org?transport=tcp")
    assert (url.scheme, url.host, url.port, url.transport) == (
        "turn",
        "turn.example.org",
        3478,
        "tcp",
    )
    assert parse_ice_url("turns:t.example.org").port == 5349
    assert parse_ice_url("stun:198.18.0.9:19302").port == 19302
    assert not parse_ice_url("stun:198.18.0.9").is_turn
    for bad in ["", "stun:", "turn:h:3478?transport=udp&x=1", "stun:h?transport=udp", "stun:h:1 "]:
        with pytest.raises(ConfigError):
            parse_ice_url(bad)
    with pytest.raises(ConfigError):
        parse_ice_url("stun:" + "a" * 300)


def test_credential_and_config_repr() -> None:
    username = "1700000000:ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    assert turn_credential(SECRET, username) == _expected_credential(username)
    # RFC 2202, HMAC-SHA1 test case 1 (a known answer, not a recomputation).
    expected = bytes.fromhex("b617318655057264e28bc0b6fb378c8ef146be00")
    assert turn_credential(b"\x0b" * 20, "Hi There") == base64.b64encode(expected).decode()
    with pytest.raises(ConfigError):
        IceConfig(turn=(TURN_URL,), secret=SECRET, ttl=600.5)  # type: ignore[arg-type]
    config = IceConfig(turn=(TURN_URL,), secret=SECRET)
    assert SECRET.decode() not in repr(config)
    (entry,) = config.servers_for("DEV", now=1000.9)
    assert entry["username"] == f"{1000 + 3600}:DEV"


GOOD_TURN = {"urls": [TURN_URL], "username": "1:DEV", "credential": "abc="}


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"ice_servers": []},
        {"ice_servers": [], "ttl": 0},
        {"ice_servers": [], "ttl": True},
        {"ice_servers": [], "ttl": 10**9},
        {"ice_servers": [], "ttl": 3600.5},
        {"ice_servers": {}, "ttl": 60},
        {"ice_servers": [], "ttl": 60, "extra": 1},
        {"ice_servers": [GOOD_TURN] * 9, "ttl": 60},
        {"ice_servers": [{"urls": []}], "ttl": 60},
        {"ice_servers": [{"urls": ["stun:198.18.0.9"] * 5}], "ttl": 60},
        {"ice_servers": [{"urls": "stun:198.18.0.9"}], "ttl": 60},
        {"ice_servers": [{"urls": ["http://198.18.0.9"]}], "ttl": 60},
        {"ice_servers": [{"urls": [7]}], "ttl": 60},
        {"ice_servers": [{"urls": [TURN_URL]}], "ttl": 60},
        {"ice_servers": [{**GOOD_TURN, "username": "x" * 257}], "ttl": 60},
        {"ice_servers": [{**GOOD_TURN, "credential": ""}], "ttl": 60},
        {"ice_servers": [{**GOOD_TURN, "credential": "a\nb"}], "ttl": 60},
        {"ice_servers": [{**GOOD_TURN, "credential": None}], "ttl": 60},
        {"ice_servers": [{"urls": [TURN_URL], "username": "1:DEV"}], "ttl": 60},
        {"ice_servers": [{**GOOD_TURN, "credentialType": "password"}], "ttl": 60},
        {"ice_servers": ["stun:198.18.0.9"], "ttl": 60},
    ],
)
@pytest.mark.asyncio
async def test_client_refuses_malformed_answers(body: Any) -> None:
    """A stand-in server answers /v1/ice with a malformed body: ServerError, never a bad entry."""
    with pytest.raises(ValueError):  # noqa: PT011 - the reason is in the message; any is fine
        check_ice_response(body)

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/v1/ice", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        key = identity.generate_device_key()
        async with ServerClient(
            f"http://127.0.0.1:{port}", fingerprint=None, device_key=key, device_cert=_cert(key)
        ) as client:
            with pytest.raises(ServerError) as e:
                await client.ice_servers()
        assert e.value.code == "server-bad-response"
    finally:
        await runner.cleanup()


@pytest.mark.asyncio
async def test_client_accepts_a_well_formed_answer() -> None:
    body = {"ice_servers": [{"urls": ["stun:198.18.0.9"]}, GOOD_TURN], "ttl": 60}

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/v1/ice", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        key = identity.generate_device_key()
        async with ServerClient(
            f"http://127.0.0.1:{port}", fingerprint=None, device_key=key, device_cert=_cert(key)
        ) as client:
            servers, _ = await client.ice_servers()
        assert servers == (
            IceServerInfo(("stun:198.18.0.9",), None, None),
            IceServerInfo((TURN_URL,), "1:DEV", "abc="),
        )
    finally:
        await runner.cleanup()


def _cert(key: Ed25519PrivateKey) -> x509.Certificate:
    ca = identity.create_account_ca(identity.new_account_id(), now=dt.datetime.now(dt.UTC))
    return identity.build_device_cert(
        ca,
        key.public_key(),
        device_id=identity.device_id_for(key.public_key()),
        now=dt.datetime.now(dt.UTC),
    )
