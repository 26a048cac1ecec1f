"""Server pieces in-process: invite parsing, signatures, passwords, the store with a fake clock, the app."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from handoffd import identity
from handoffd.errors import HandoffError, ServerError, StoreError
from handoffd.server import pairing, passwords
from handoffd.server.app import STORE, ServerConfig, make_app
from handoffd.server.cli import KeyValueFormatter, default_data_dir, parse_listen
from handoffd.server.store import SCHEMA_VERSION, Store
from handoffd.serverlink import ServerClient
from handoffd.wire import auth

FP = "sha256:" + "ab" * 32


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- invites


def test_invite_url_round_trip() -> None:
    s = pairing.new_secrets()
    url = pairing.invite_url("https://example.org:8443", s.token, FP)
    assert url.startswith("handoff://pair?server=https://example.org:8443&token=")
    invite = pairing.parse_invite(url)
    assert invite == pairing.Invite("https://example.org:8443", s.token, None, FP)
    assert len(s.token) >= 43  # 256 bits
    assert len(s.code) == 12
    assert set(s.code) <= set(pairing.CODE_ALPHABET)


def test_short_code_normalization() -> None:
    code = "K7QF2M9XHT4P"
    assert pairing.format_code(code) == "K7QF-2M9X-HT4P"
    invite = pairing.parse_invite(" k7qf-2m9x ht4p ", server_url="http://h:1/", fingerprint=None)
    assert invite == pairing.Invite("http://h:1", None, code, None)
    # Crockford: O is 0, I and L are 1.
    assert pairing.normalize_code("OOII-LL00-1111") == "001111001111"
    with pytest.raises(HandoffError) as e:
        pairing.parse_invite("K7QF-2M9X-HT4P")  # no server
    assert e.value.code == "invite-malformed"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "handoff://pair?server=https://h&token=short",
        "handoff://pair?server=ftp://h&token=" + "a" * 43,
        "handoff://pair?server=https://u:p@h&token=" + "a" * 43,
        "handoff://pair?token=" + "a" * 43,
        "handoff://pair?server=https://h&token=" + "a" * 43 + "&fp=md5:00",
        "handoff://pair?server=https://h&token=" + "a" * 43 + "&token=" + "b" * 43,
        "handoff://pair?server=https://h&token=" + "a" * 43 + "&extra=1",
        "handoff://evil?server=https://h&token=" + "a" * 43,
        "https://h/pair?token=" + "a" * 43,
        "K7QF-2M9X-HT4U",
        "x" * 5000,
        "handoff://[pair?x",
        "handoff://pair?server=http://h:99999&token=" + "a" * 43,
    ],
)
def test_malformed_invites(text: str) -> None:
    with pytest.raises(HandoffError) as e:
        pairing.parse_invite(text, server_url="https://h" if text.startswith("K7") else None)
    assert e.value.code == "invite-malformed"


@given(
    st.one_of(st.text(max_size=300), st.text(max_size=300).map(lambda t: "handoff://" + t)),
    st.one_of(st.none(), st.text(max_size=50)),
)
def test_parse_invite_raises_only_handoff_errors(text: str, server: str | None) -> None:
    code = "ok"
    try:
        invite = pairing.parse_invite(text, server_url=server)
    except HandoffError as exc:
        code = exc.code
    else:
        assert (invite.token is None) != (invite.code is None)
    assert code in ("ok", "invite-malformed")


def test_rate_limiter() -> None:
    limiter = pairing.RateLimiter(per_minute=60, burst=2)
    assert limiter.allow("a", 0.0)
    assert limiter.allow("a", 0.0)
    assert not limiter.peek("a", 0.0)
    assert not limiter.allow("a", 0.5)
    assert limiter.peek("b", 0.5)  # per key
    assert limiter.allow("a", 1.6)  # refilled at 1 per second


# ---------------------------------------------------------------- signatures and passwords


def test_request_signature_checks() -> None:
    key = identity.generate_device_key()
    verifier = auth.RequestVerifier()
    now = 1_800_000_000.0
    headers = auth.sign_request(key, "POST", "/v1/invites?x=1", b"{}", now=now)
    signed = auth.parse_signature_headers(headers)
    verifier.verify(
        signed, key.public_key(), method="POST", path_qs="/v1/invites?x=1", body=b"{}", now=now + 5
    )
    cases = [
        ("POST", "/v1/invites?x=1", b"{}", now, "auth-replayed"),
        ("GET", "/v1/invites?x=1", b"{}", now, "auth-invalid"),
        ("POST", "/v1/invites?x=2", b"{}", now, "auth-invalid"),
        ("POST", "/v1/invites?x=1", b"[]", now, "auth-invalid"),
    ]
    for method, path, body, at, code in cases:
        with pytest.raises(ServerError) as e:
            verifier.verify(
                signed, key.public_key(), method=method, path_qs=path, body=body, now=at
            )
        assert e.value.code == code
    fresh = auth.parse_signature_headers(auth.sign_request(key, "GET", "/", b"", now=now))
    with pytest.raises(ServerError) as e:
        verifier.verify(fresh, key.public_key(), method="GET", path_qs="/", body=b"", now=now + 61)
    assert e.value.code == "auth-stale"
    other = identity.generate_device_key()
    with pytest.raises(ServerError) as e:
        verifier.verify(fresh, other.public_key(), method="GET", path_qs="/", body=b"", now=now)
    assert e.value.code == "auth-invalid"
    for broken in ({}, {**headers, auth.H_TIMESTAMP: "-1"}, {**headers, auth.H_NONCE: "!!"}):
        with pytest.raises(ServerError) as e:
            auth.parse_signature_headers(broken)
        assert e.value.code in ("auth-missing", "auth-malformed")


def test_password_hash_is_argon2id() -> None:
    encoded = passwords.hash_password("hunter2 is not great")
    assert encoded.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert passwords.check_password("hunter2 is not great", encoded)
    assert not passwords.check_password("hunter3 is not great", encoded)
    assert not passwords.check_password("x", "$argon2id$v=19$garbage")
    assert not passwords.check_password("x", "")
    assert encoded != passwords.hash_password("hunter2 is not great")  # salted


def test_hashes_made_with_cryptography_still_verify() -> None:
    # Written by the earlier implementation (cryptography's Argon2id) for "hunter2".
    old = "$argon2id$v=19$m=65536,t=3,p=4$lVKrDdzN9eiMmuA8mAEHrg$/uFzSvDAy9EYsLcHgj5B9V6PTxSyisLryg+Vuyu0CIw"
    assert passwords.check_password("hunter2", old)
    assert not passwords.check_password("hunter3", old)
    # Parameters outside the accepted bounds are refused without hashing.
    assert not passwords.check_password("hunter2", old.replace("m=65536", "m=999999999"))


# ---------------------------------------------------------------- store


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock, database: str | None) -> Iterator[Store]:
    s = Store.open(tmp_path / "data", clock=clock, database=database)
    try:
        yield s
    finally:
        s.close()


def _csr(key: Ed25519PrivateKey | None = None) -> bytes:
    return identity.csr_to_pem(identity.make_csr(key or identity.generate_device_key()))


def test_schema_version_and_newer_database_refused(tmp_path: Path) -> None:
    s = Store.open(tmp_path / "d")
    assert s.schema_version() == SCHEMA_VERSION
    s.close()
    s.close()  # idempotent
    db = sqlite3.connect(tmp_path / "d" / "server.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StoreError) as e:
        Store.open(tmp_path / "d")
    assert e.value.code == "store-too-new"


def test_expired_invite_with_injected_clock(store: Store, clock: Clock) -> None:
    account = store.create_account("erin")
    invite = store.create_invite(account.account_id, created_by="web")
    before = store.counts()
    clock.now += pairing.INVITE_TTL + 1
    with pytest.raises(ServerError) as e:
        store.join(token=invite.secrets.token, csr_pem=_csr(), name="n", platform="linux")
    assert (e.value.code, e.value.status) == ("invite-expired", 410)
    assert store.counts() == before
    state = store.invite_state(invite.invite_id)
    assert state is not None
    assert state["used_at"] is None


def test_join_is_one_transaction(store: Store) -> None:
    account = store.create_account("fay")
    key = identity.generate_device_key()
    first = store.create_invite(account.account_id, created_by="cli")
    issued = store.join(code=first.secrets.code, csr_pem=_csr(key), name="a", platform="linux")
    assert issued.device_id == identity.device_id_for(key.public_key())
    second = store.create_invite(account.account_id, created_by="cli")
    before = store.counts()
    with pytest.raises(ServerError) as e:  # the same key cannot join twice
        store.join(token=second.secrets.token, csr_pem=_csr(key), name="b", platform="linux")
    assert e.value.code == "device-exists"
    with pytest.raises(ServerError) as e:
        store.join(token=second.secrets.token, csr_pem=_csr(), name="b", platform="bad platform")
    assert e.value.code == "platform-invalid"
    assert store.counts() == before
    state = store.invite_state(second.invite_id)
    assert state is not None
    assert state["used_at"] is None


def test_revocation_crl_numbers_and_refresh(store: Store, clock: Clock) -> None:
    account = store.create_account("gus")
    invite = store.create_invite(account.account_id, created_by="cli")
    key = identity.generate_device_key()
    issued = store.join(token=invite.secrets.token, csr_pem=_csr(key), name="a", platform="linux")
    assert identity.crl_number(store.current_crl(account.account_id)) == 1
    crl = store.revoke_device(account.account_id, issued.device_id)
    assert identity.crl_number(crl) == 2
    assert crl.get_revoked_certificate_by_serial_number(issued.device_cert.serial_number)
    # Revoking again changes nothing.
    assert identity.crl_number(store.revoke_device(account.account_id, issued.device_id)) == 2
    # Half the CRL's lifetime later it is re-issued with the next number.
    clock.now += identity.CRL_LIFETIME.total_seconds() * 0.6
    refreshed = store.current_crl(account.account_id)
    assert identity.crl_number(refreshed) == 3
    assert refreshed.get_revoked_certificate_by_serial_number(issued.device_cert.serial_number)
    identity.verify_crl(refreshed, account.ca_cert)
    # A revoked key cannot come back.
    again = store.create_invite(account.account_id, created_by="cli")
    with pytest.raises(ServerError) as e:
        store.join(token=again.secrets.token, csr_pem=_csr(key), name="a", platform="linux")
    assert (e.value.code, e.value.status) == ("device-revoked", 403)
    with pytest.raises(ServerError) as e:
        store.renew(issued.device_id, _csr(key))
    assert e.value.code == "device-revoked"


def test_login(store: Store) -> None:
    account = store.create_account("hal", "s3cret-pass")
    assert account.has_password
    found = store.check_login("hal", "s3cret-pass")
    assert found is not None
    assert found.account_id == account.account_id
    assert store.check_login("hal", "wrong") is None
    assert store.check_login("nobody", "s3cret-pass") is None
    with pytest.raises(ServerError) as e:
        store.create_account("bad name!")
    assert e.value.code == "account-name-invalid"


# ---------------------------------------------------------------- the app in-process


@pytest_asyncio.fixture
async def app_url(
    tmp_path: Path, clock: Clock, database: str | None
) -> AsyncIterator[tuple[str, Store]]:
    store = Store.open(tmp_path / "data", clock=clock, database=database)
    config = ServerConfig(
        data_dir=tmp_path / "data", join_failures_per_minute=2, join_failure_burst=2, clock=clock
    )
    seen: list[object] = []

    def web_setup(app: web.Application, s: Store, c: ServerConfig) -> None:
        seen.append((s, c))

        async def page(request: web.Request) -> web.Response:
            assert request.app[STORE] is s
            return web.Response(text="hello page")

        app.router.add_get("/", page)

    app = make_app(store, config, web_setup=web_setup)
    assert seen == [(store, config)]
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", store
    finally:
        await runner.cleanup()
        store.close()


@pytest.mark.asyncio
async def test_join_failures_are_rate_limited_per_client(app_url: tuple[str, Store]) -> None:
    url, store = app_url
    account = store.create_account("ivy")
    invite = store.create_invite(account.account_id, created_by="web")
    async with aiohttp.ClientSession() as session:
        for expected in (403, 403, 429, 429):
            body = {"token": "x" * 43, "csr": _csr().decode(), "name": "n", "platform": "linux"}
            async with session.post(url + "/v1/join", json=body) as resp:
                assert resp.status == expected
                answer = await resp.json()
        assert answer["error"]["code"] == "rate-limited"
        # Even the right token waits now: the limit is on the client, not the invite.
        good = {"token": invite.secrets.token, "csr": _csr().decode(), "name": "n", "platform": "l"}
        async with session.post(url + "/v1/join", json=good) as resp:
            assert resp.status == 429
        async with session.get(url + "/") as resp:
            assert await resp.text() == "hello page"  # the web pages hook was applied
        async with session.get(url + "/nope") as resp:
            assert resp.status == 404
            assert resp.content_type != "application/json"  # only /v1 errors are JSON


@pytest.mark.asyncio
async def test_plain_http_client_and_invite_from_device(app_url: tuple[str, Store]) -> None:
    url, store = app_url
    account = store.create_account("jo")
    invite = store.create_invite(account.account_id, created_by="cli")
    key = identity.generate_device_key()
    parsed = pairing.parse_invite(pairing.invite_url(url, invite.secrets.token, None))
    async with ServerClient(url, fingerprint=None) as client:
        result = await client.join(parsed, key=key, name="jo's", platform="linux")
        created = await client.create_invite()
        assert created.url.startswith(f"handoff://pair?server={url}&token=")
        assert "fp=" not in created.url  # plain HTTP: nothing to pin
        (record,) = await client.devices()
        assert record.device_id == result.device_id
        assert record.name == "jo's"
        assert record.last_seen is not None


def test_log_lines_are_key_value() -> None:
    record = logging.LogRecord(
        "handoffd.server.api", logging.INFO, __file__, 1, "device joined account=%s", ("A",), None
    )
    line = KeyValueFormatter().format(record)
    assert "\n" not in line
    assert 'level=info logger=handoffd.server.api event="device joined" account=A' in line
    assert line.startswith("ts=")
    assert json.loads(line.split("event=")[1].split(" account")[0]) == "device joined"


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:8443") == ("::1", 8443)
    assert parse_listen(":9000") == ("0.0.0.0", 9000)
    with pytest.raises(HandoffError):
        parse_listen("nope")


@pytest.mark.asyncio
async def test_lapsed_certificate_can_renew_but_nothing_else(
    app_url: tuple[str, Store], clock: Clock
) -> None:
    url, store = app_url
    account = store.create_account("kim")
    invite = store.create_invite(account.account_id, created_by="cli")
    key = identity.generate_device_key()
    # Paired 31 days ago: its 30-day certificate has lapsed.
    real = clock.now
    clock.now = real - identity.DEVICE_CERT_LIFETIME.total_seconds() - 86400
    issued = store.join(token=invite.secrets.token, csr_pem=_csr(key), name="k", platform="l")
    clock.now = real
    async with ServerClient(
        url, fingerprint=None, device_key=key, device_cert=issued.device_cert
    ) as client:
        with pytest.raises(ServerError) as e:
            await client.devices()
        assert (e.value.code, e.value.status) == ("cert-expired", 401)
        with pytest.raises(ServerError) as e:
            await client.create_invite()
        assert e.value.code == "cert-expired"
        renewed = await client.renew()
        assert renewed.not_valid_after_utc.timestamp() > real
        (record,) = await client.devices()
        assert record.device_id == issued.device_id


def test_data_dir_default_and_private_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/state:{tmp_path}/other")
    assert default_data_dir() == tmp_path / "state"
    monkeypatch.delenv("STATE_DIRECTORY")
    assert default_data_dir().name == "handoff-server"
    store = Store.open(tmp_path / "state")
    try:
        store.create_account("lee")  # the CA key lives in the database
        wal = tmp_path / "state" / "server.db-wal"
        assert wal.exists()
        assert wal.stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "state" / "server.db").stat().st_mode & 0o777 == 0o600
    finally:
        store.close()
