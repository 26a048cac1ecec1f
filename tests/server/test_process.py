"""handoff-server as a real process: pairing over pinned HTTPS, refusals, WebSocket, restart."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yarl
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from handoffd import identity
from handoffd.errors import ServerError
from handoffd.server import pairing, tlscert
from handoffd.serverlink import JoinResult, ServerClient, parse_invite
from handoffd.wire import auth
from tests.server.conftest import Seed
from tests.server.helpers import cli, cli_invite, create_account, new_device, pair
from tests.support.processes import ServerProcess

OPENSSL = shutil.which("openssl") or "openssl"
# More than the default 60 s: a real server over TLS, stopped and restarted, and CLI runs.
pytestmark = pytest.mark.timeout(120)


def _pem_files(tmp: Path, result: JoinResult) -> tuple[Path, Path, Path]:
    ca, dev, crl = tmp / "ca.pem", tmp / "device.pem", tmp / "crl.pem"
    ca.write_bytes(identity.cert_to_pem(result.account_ca))
    dev.write_bytes(identity.cert_to_pem(result.device_cert))
    crl.write_bytes(identity.crl_to_pem(result.crl))
    return ca, dev, crl


def _openssl_verify(
    ca: Path, cert: Path, crl: Path | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [OPENSSL, "verify", "-CAfile", str(ca)]
    if crl is not None:
        argv += ["-crl_check", "-CRLfile", str(crl)]
    return subprocess.run([*argv, str(cert)], capture_output=True, text=True, check=False)


async def _raw(
    server: ServerProcess,
    method: str,
    path: str,
    *,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """A request without ServerClient (malformed input); returns (status, JSON body)."""
    assert server.fingerprint is not None
    pin = aiohttp.Fingerprint(bytes.fromhex(server.fingerprint[len("sha256:") :]))
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method,
            yarl.URL(server.url + path, encoded=True),
            data=body or None,
            headers=headers or {},
            ssl=pin,
            timeout=aiohttp.ClientTimeout(total=20),
        ) as resp,
    ):
        return resp.status, json.loads(await resp.read())


async def _api_invite(server: ServerProcess, seed: Seed) -> str:
    async with server.client(seed.key, seed.result) as client:
        return (await client.create_invite()).url


def _join_body(invite_url: str, csr_pem: bytes, name: str = "x") -> bytes:
    invite = parse_invite(invite_url)
    return json.dumps(
        {"token": invite.token, "csr": csr_pem.decode(), "name": name, "platform": "linux"}
    ).encode()


# ---------------------------------------------------------------- the join flow and restart


@pytest.mark.asyncio
async def test_join_over_pinned_https_openssl_and_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data).start()
    try:
        assert server.url.startswith("https://127.0.0.1:")
        assert server.fingerprint == tlscert.read_fingerprint(data)
        account_id = create_account(data, "carol")
        assert identity.is_account_id(account_id)
        url, code = cli_invite(data, "carol")
        invite = parse_invite(url)
        assert invite.fingerprint == server.fingerprint
        assert invite.server_url == server.url
        assert len(pairing.normalize_code(code)) == 12

        key, result, client = await pair(server, url, name="Carol's laptop")
        async with client:
            info = await client.info()
            assert info["fingerprint"] == server.fingerprint
            assert result.account_id == account_id
            assert result.device_id == identity.device_id_for(key.public_key())
            ca, dev, crl = _pem_files(tmp_path, result)
            ok = _openssl_verify(ca, dev, crl)
            assert ok.returncode == 0, ok.stderr
            assert f"{dev}: OK" in ok.stdout

            # A second device (invite made by the first through the API).
            seed = Seed("carol", account_id, key, result)
            _key2, result2, client2 = await new_device(server, seed.key, seed.result, "desktop")
            await client2.close()
            devices = {d.device_id: d for d in await client.devices()}
            assert set(devices) == {result.device_id, result2.device_id}
            assert devices[result.device_id].name == "Carol's laptop"

            new_crl = await client.revoke(result2.device_id)
            assert identity.crl_number(new_crl) == 2
        assert server.stop() == 0  # SIGTERM: graceful

        server.start()  # same data dir: same certificate, accounts, devices, CRL
        assert server.fingerprint == invite.fingerprint
        async with server.client(key, result) as client:
            devices = {d.device_id: d for d in await client.devices()}
            assert devices[result2.device_id].revoked
            assert not devices[result.device_id].revoked
            crl_after = await client.fetch_crl()
            assert identity.crl_number(crl_after) == 2
            assert crl_after.get_revoked_certificate_by_serial_number(
                result2.device_cert.serial_number
            )
            # openssl agrees: the revoked device fails the CRL check, the other passes.
            crl_path = tmp_path / "crl2.pem"
            crl_path.write_bytes(identity.crl_to_pem(crl_after))
            dev2 = tmp_path / "device2.pem"
            dev2.write_bytes(identity.cert_to_pem(result2.device_cert))
            revoked = _openssl_verify(ca, dev2, crl_path)
            assert revoked.returncode != 0
            assert "revoked" in (revoked.stdout + revoked.stderr)
            assert _openssl_verify(ca, dev, crl_path).returncode == 0
            # DER form of the CRL
            status_der = await _crl_der(server, account_id)
            assert identity.crl_number(x509.load_der_x509_crl(status_der)) == 2
    finally:
        server.stop()
    log = server.log.read_text()
    assert 'event="server stopped"' in log
    assert invite.token is not None
    assert invite.token not in log


async def _crl_der(server: ServerProcess, account_id: str) -> bytes:
    assert server.fingerprint is not None
    pin = aiohttp.Fingerprint(bytes.fromhex(server.fingerprint[7:]))
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{server.url}/v1/crl?account={account_id}&format=der", ssl=pin) as resp,
    ):
        assert resp.status == 200
        assert resp.content_type == "application/pkix-crl"
        return await resp.read()


@pytest.mark.asyncio
async def test_wrong_pin_fails_and_the_invite_stays_unused(
    server: ServerProcess, alice: Seed
) -> None:
    url = await _api_invite(server, alice)
    invite = parse_invite(url)
    before = server.counts()
    wrong = "sha256:" + "00" * 32
    async with ServerClient(invite.server_url, fingerprint=wrong) as client:
        with pytest.raises(ServerError) as e:
            await client.join(
                invite, key=identity.generate_device_key(), name="x", platform="linux"
            )
    assert e.value.code == "server-fingerprint-mismatch"
    assert server.counts() == before
    # The invite is intact: the right pin joins with it.
    _, result, client = await pair(server, url, name="after-wrong-pin")
    await client.close()
    assert result.account_id == alice.account_id


@pytest.mark.asyncio
async def test_wrong_pin_sends_no_application_byte(tmp_path: Path) -> None:
    """A TLS listener records what arrives after the handshake: nothing, with a wrong pin."""
    key, cert = tlscert.make_certificate(now=dt.datetime.now(dt.UTC))
    (tmp_path / "c.pem").write_bytes(identity.cert_to_pem(cert))
    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    received: list[bytes] = []
    handshakes: list[bool] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handshakes.append(True)
        try:
            received.append(await asyncio.wait_for(reader.read(65536), 10))
        except (ConnectionError, TimeoutError, ssl.SSLError):
            received.append(b"")
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    port = srv.sockets[0].getsockname()[1]
    try:
        wrong = "sha256:" + "ab" * 32
        async with ServerClient(f"https://127.0.0.1:{port}", fingerprint=wrong) as client:
            with pytest.raises(ServerError) as e:
                await client.info()
        assert e.value.code == "server-fingerprint-mismatch"
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.05)
        assert handshakes == [True]  # the TLS handshake itself happened
        assert received == [b""]  # ...and not one request byte followed it
        # Control: with the right pin the same listener does receive the request.
        right = identity.fingerprint_cert(cert)
        received.clear()
        async with ServerClient(f"https://127.0.0.1:{port}", fingerprint=right) as client:
            with pytest.raises(ServerError):
                await client.info()  # our fake server answers nothing useful
        assert received
        assert received[0].startswith(b"GET /v1/info")
    finally:
        srv.close()
        await srv.wait_closed()


# ---------------------------------------------------------------- refusals, each leaving no trace


@pytest.mark.asyncio
async def test_reused_invite_is_refused(server: ServerProcess, alice: Seed) -> None:
    url = await _api_invite(server, alice)
    _, _, client = await pair(server, url, name="first")
    await client.close()
    before = server.counts()
    with pytest.raises(ServerError) as e:
        await pair(server, url, name="second")
    assert (e.value.code, e.value.status) == ("invite-used", 409)
    assert server.counts() == before


@pytest.mark.asyncio
async def test_expired_invite_is_refused(server: ServerProcess, alice: Seed) -> None:
    url, _ = cli_invite(server.data, "alice", "--ttl", "1")
    await asyncio.sleep(1.3)
    before = server.counts()
    with pytest.raises(ServerError) as e:
        await pair(server, url)
    assert (e.value.code, e.value.status) == ("invite-expired", 410)
    assert server.counts() == before


@pytest.mark.asyncio
async def test_wrong_short_code_is_counted_then_locks(server: ServerProcess, alice: Seed) -> None:
    async with server.client(alice.key, alice.result) as client:
        created = await client.create_invite()
    code = pairing.normalize_code(created.code)
    before = server.counts()
    for i in range(pairing.MAX_FAILURES):
        # Same locator, wrong secret: counted against this invite.
        last = pairing.CODE_ALPHABET[(pairing.CODE_ALPHABET.index(code[-1]) + 1 + i) % 32]
        wrong = code[:-1] + last
        with pytest.raises(ServerError) as e:
            await pair(server, wrong)
        assert (e.value.code, e.value.status) == ("invite-unknown", 403)
    # Now even the right code is refused: the invite is locked.
    with pytest.raises(ServerError) as e:
        await pair(server, pairing.format_code(code).lower())
    assert (e.value.code, e.value.status) == ("invite-locked", 423)
    assert server.counts() == before


@pytest.mark.asyncio
async def test_short_code_joins(server: ServerProcess, alice: Seed) -> None:
    async with server.client(alice.key, alice.result) as client:
        created = await client.create_invite()
    assert parse_invite(created.url).fingerprint == server.fingerprint
    assert created.qr_svg.lstrip().startswith("<svg")
    _, result, device = await pair(server, created.code.replace("-", " "), name="typed")
    await device.close()
    assert result.account_id == alice.account_id


@pytest.mark.asyncio
async def test_malformed_and_mismatched_csr(server: ServerProcess, alice: Seed) -> None:
    url = await _api_invite(server, alice)
    before = server.counts()
    status, body = await _raw(
        server,
        "POST",
        "/v1/join",
        body=_join_body(url, b"-----BEGIN CERTIFICATE REQUEST-----\nnope"),
    )
    assert (status, body["error"]["code"]) == (400, "csr-malformed")
    # A CSR whose signature (proof of possession) does not match its key.
    der = bytearray(
        identity.make_csr(identity.generate_device_key()).public_bytes(serialization.Encoding.DER)
    )
    der[-1] ^= 0x01
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    status, body = await _raw(server, "POST", "/v1/join", body=_join_body(url, tampered))
    assert (status, body["error"]["code"]) == (400, "csr-bad-proof")
    # A device name with control characters.
    good_csr = identity.csr_to_pem(identity.make_csr(identity.generate_device_key()))
    status, body = await _raw(
        server, "POST", "/v1/join", body=_join_body(url, good_csr, name="evil\x1b[31m")
    )
    assert (status, body["error"]["code"]) == (400, "name-invalid")
    assert server.counts() == before
    # None of that used the invite up.
    _, result, client = await pair(server, url, name="fine")
    await client.close()
    assert result.account_id == alice.account_id


@pytest.mark.asyncio
async def test_lone_surrogates_in_json_bodies_are_refused(
    server: ServerProcess, alice: Seed
) -> None:
    """Fuzz finding: a "\\ud800" escape in a csr (join, renew) answered 500 with a traceback."""
    url = await _api_invite(server, alice)
    key, result, client = await new_device(server, alice.key, alice.result, "surrogates")
    await client.close()
    log_before = server.log.read_text()
    before = server.counts()
    good_csr = identity.csr_to_pem(identity.make_csr(identity.generate_device_key())).decode()
    lone = "\ud800"
    token = parse_invite(url).token
    join_bodies: list[dict[str, Any]] = [
        {"token": token, "csr": good_csr + lone, "name": "x", "platform": "p"},
        {"token": token, "csr": good_csr, "name": "x", "platform": "p" + lone},
        {"token": token, "csr": good_csr, "name": "x", "platform": "p", lone: 1},
    ]
    for body in join_bodies:
        status, answer = await _raw(server, "POST", "/v1/join", body=json.dumps(body).encode())
        assert (status, answer["error"]["code"]) == (400, "not-utf8"), body
    # Signed device requests: the signature covers the escaped text, so they pass auth first.
    signed: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/v1/renew", {"csr": lone}),
        ("PATCH", f"/v1/devices/{result.device_id}", {"name": "box" + lone}),
        ("POST", "/v1/invites", {"note": lone}),
    ]
    for method, path, fields in signed:
        raw = json.dumps(fields).encode()
        headers = auth.sign_request(key, method, path, raw, now=time.time())
        status, answer = await _raw(server, method, path, body=raw, headers=headers)
        assert (status, answer["error"]["code"]) == (400, "not-utf8"), path
    assert server.counts() == before
    assert "Traceback" not in server.log.read_text()[len(log_before) :]
    # The invite is still good.
    _, joined, client = await pair(server, url, name="fine")
    await client.close()
    assert joined.account_id == alice.account_id


@pytest.mark.asyncio
async def test_oversized_and_non_json_bodies(server: ServerProcess, alice: Seed) -> None:
    before = server.counts()
    status, body = await _raw(server, "POST", "/v1/join", body=b"{" + b" " * (300 * 1024) + b"}")
    assert (status, body["error"]["code"]) == (413, "body-too-large")
    status, body = await _raw(server, "POST", "/v1/join", body=b"[1, 2")
    assert (status, body["error"]["code"]) == (400, "body-malformed")
    status, body = await _raw(server, "GET", "/v1/nothing-here")
    assert (status, body["error"]["code"]) == (404, "not-found")
    status, body = await _raw(server, "GET", "/v1/devices")
    assert (status, body["error"]["code"]) == (401, "auth-missing")
    assert server.counts() == before


@pytest.mark.asyncio
async def test_no_invites_or_revocations_across_accounts(
    server: ServerProcess, alice: Seed, bob: Seed
) -> None:
    before = server.counts()
    body = json.dumps({"account_id": bob.account_id}).encode()
    headers = auth.sign_request(alice.key, "POST", "/v1/invites", body, now=time.time())
    status, answer = await _raw(server, "POST", "/v1/invites", body=body, headers=headers)
    assert (status, answer["error"]["code"]) == (403, "account-mismatch")
    async with server.client(alice.key, alice.result) as client:
        with pytest.raises(ServerError) as e:
            await client.revoke(bob.result.device_id)
        assert (e.value.code, e.value.status) == ("device-unknown", 404)
        with pytest.raises(ServerError) as e:
            await client.rename(bob.result.device_id, "pwned")
        assert e.value.code == "device-unknown"
        assert bob.result.device_id not in {d.device_id for d in await client.devices()}
    assert server.counts() == before


@pytest.mark.asyncio
async def test_replayed_signed_request_is_refused(server: ServerProcess, alice: Seed) -> None:
    body = b"{}"
    headers = auth.sign_request(alice.key, "POST", "/v1/invites", body, now=time.time())
    status, _ = await _raw(server, "POST", "/v1/invites", body=body, headers=headers)
    assert status == 201
    before = server.counts()
    status, answer = await _raw(server, "POST", "/v1/invites", body=body, headers=headers)
    assert (status, answer["error"]["code"]) == (401, "auth-replayed")
    # A stale timestamp and a signature over another body are refused too.
    stale = auth.sign_request(alice.key, "POST", "/v1/invites", body, now=time.time() - 300)
    status, answer = await _raw(server, "POST", "/v1/invites", body=body, headers=stale)
    assert (status, answer["error"]["code"]) == (401, "auth-stale")
    other = auth.sign_request(alice.key, "POST", "/v1/invites", b"{ }", now=time.time())
    status, answer = await _raw(server, "POST", "/v1/invites", body=body, headers=other)
    assert (status, answer["error"]["code"]) == (401, "auth-invalid")
    assert server.counts() == before


# ---------------------------------------------------------------- devices: renew, rename, CLI


@pytest.mark.asyncio
async def test_renew_rename_and_cli_listing(
    server: ServerProcess, alice: Seed, tmp_path: Path
) -> None:
    key, result, client = await new_device(server, alice.key, alice.result, "renewer")
    async with client:
        renewed = await client.renew()
        assert renewed.serial_number != result.device_cert.serial_number
        assert identity.cert_device_id(renewed) == result.device_id
        ca, _, _ = _pem_files(tmp_path, result)
        (tmp_path / "renewed.pem").write_bytes(identity.cert_to_pem(renewed))
        assert _openssl_verify(ca, tmp_path / "renewed.pem").returncode == 0
        # A CSR for another key is refused.
        other = identity.csr_to_pem(identity.make_csr(identity.generate_device_key())).decode()
        body = json.dumps({"csr": other}).encode()
        headers = auth.sign_request(key, "POST", "/v1/renew", body, now=time.time())
        status, answer = await _raw(server, "POST", "/v1/renew", body=body, headers=headers)
        assert (status, answer["error"]["code"]) == (400, "csr-wrong-key")

        record = await client.rename(result.device_id, "  Renamed box  ")
        assert record.name == "Renamed box"
        with pytest.raises(ServerError) as e:
            await client.rename(result.device_id, "x" * 65)
        assert e.value.code == "name-invalid"

    listing = json.loads(cli(server.data, "devices", "alice", "--json").stdout)
    assert listing["account_id"] == alice.account_id
    names = {d["device_id"]: d["name"] for d in listing["devices"]}
    assert names[result.device_id] == "Renamed box"
    text = cli(server.data, "devices", "alice").stdout
    assert identity.format_device_id(result.device_id) in text
    failed = cli(server.data, "revoke", "alice", "no-such-device", check=False)
    assert failed.returncode == 1
    assert "[device-unknown]" in failed.stderr
    failed = cli(server.data, "invite", "nobody", "--no-qr", check=False)
    assert failed.returncode == 1
    assert "[account-unknown]" in failed.stderr


def test_cli_account_password_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    pw = tmp_path / "pw"
    pw.write_text("correct horse battery staple\n")
    out = cli(data, "account", "create", "dave", "--password-file", str(pw)).stdout.strip()
    assert identity.is_account_id(out)
    again = cli(data, "account", "create", "DAVE", "--password-file", str(pw), check=False)
    assert again.returncode == 1
    assert "[account-exists]" in again.stderr
    assert (data / "server.db").stat().st_mode & 0o777 == 0o600
    assert data.stat().st_mode & 0o777 == 0o700
