"""Identity: keys, account CA, device certificates, CRLs and the one verification."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from handoffd import identity as idn
from handoffd.errors import IdentityError, KeyFileError, VerificationError

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
OPENSSL = shutil.which("openssl") or "openssl"


def make_device(
    ca: idn.AccountCA, now: dt.datetime = NOW
) -> tuple[Ed25519PrivateKey, x509.Certificate]:
    key = idn.generate_device_key()
    return key, idn.issue_device_cert(ca, idn.make_csr(key), now=now)


@pytest.fixture
def ca() -> idn.AccountCA:
    return idn.create_account_ca(idn.new_account_id(), now=NOW)


def test_device_id_is_base32_of_sha256_prefix() -> None:
    key = idn.generate_device_key()
    device_id = idn.device_id_for(key.public_key())
    assert idn.is_device_id(device_id)
    grouped = idn.format_device_id(device_id)
    assert grouped.count("-") == 7
    assert idn.parse_device_id(grouped.lower()) == device_id
    with pytest.raises(IdentityError) as e:
        idn.parse_device_id("not-an-id")
    assert e.value.code == "bad-device-id"


def test_key_roundtrip_and_mode(tmp_path: Path) -> None:
    key = idn.generate_device_key()
    path = tmp_path / "identity" / "device.key"
    idn.save_private_key(path, key)
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = idn.load_private_key(path)
    assert idn.device_id_for(loaded.public_key()) == idn.device_id_for(key.public_key())
    assert b"BEGIN PRIVATE KEY" in path.read_bytes()


def test_key_readable_by_others_is_refused_with_fix(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    idn.save_private_key(path, idn.generate_device_key())
    path.chmod(0o644)
    with pytest.raises(KeyFileError) as e:
        idn.load_private_key(path)
    assert e.value.code == "key-permissions"
    assert f"chmod 600 {path}" in e.value.message


def test_key_missing_and_malformed(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError) as e:
        idn.load_private_key(tmp_path / "nope.key")
    assert e.value.code == "key-missing"
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    bad.chmod(0o600)
    with pytest.raises(KeyFileError) as e:
        idn.load_private_key(bad)
    assert e.value.code == "key-malformed"


def test_account_ca_shape(ca: idn.AccountCA) -> None:
    bc = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca
    assert bc.value.path_length == 0
    ku = ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign
    assert ku.crl_sign
    assert idn.check_account_ca(ca.cert, now=NOW) == ca.account_id


def test_device_cert_shape(ca: idn.AccountCA) -> None:
    key, cert = make_device(ca)
    device_id = idn.device_id_for(key.public_key())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = set(san.get_values_for_type(x509.UniformResourceIdentifier))
    assert uris == {f"urn:handoff:device:{device_id}", f"urn:handoff:account:{ca.account_id}"}
    assert cert.not_valid_after_utc - NOW == dt.timedelta(days=30)
    assert 0 < cert.serial_number < 2**128
    peer = idn.verify_device_cert(cert, idn.TrustAnchor.from_ca(ca.cert), now=NOW)
    assert peer.device_id == device_id
    assert peer.account_id == ca.account_id


def test_serials_are_random(ca: idn.AccountCA) -> None:
    serials = {make_device(ca)[1].serial_number for _ in range(8)}
    assert len(serials) == 8
    assert max(s.bit_length() for s in serials) > 100


def test_csr_proof_of_possession(ca: idn.AccountCA) -> None:
    key = idn.generate_device_key()
    csr = idn.make_csr(key)
    assert idn.check_csr(idn.load_csr(idn.csr_to_pem(csr))) == idn.device_id_for(key.public_key())
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature
    broken = x509.load_der_x509_csr(bytes(der))
    with pytest.raises(IdentityError) as e:
        idn.issue_device_cert(ca, broken, now=NOW)
    assert e.value.code == "csr-bad-proof"
    with pytest.raises(IdentityError) as e:
        idn.load_csr(b"garbage")
    assert e.value.code == "csr-malformed"


# ------------------------------------------------------------------ negative verification


def _code(cert: x509.Certificate, trust: idn.TrustAnchor, **kw: object) -> str:
    with pytest.raises(VerificationError) as e:
        idn.verify_device_cert(cert, trust, **{"now": NOW, **kw})  # type: ignore[arg-type]
    return e.value.code


def test_each_rejection_has_its_own_code(ca: idn.AccountCA) -> None:
    trust = idn.TrustAnchor.from_ca(ca.cert)
    key, cert = make_device(ca)
    codes: dict[str, str] = {}

    # tampered: flip a bit inside the signed part (the validity's last byte keeps it parseable)
    der = bytearray(idn.cert_to_der(cert))
    serial_bytes = cert.serial_number.to_bytes(16, "big")
    at = bytes(der).index(serial_bytes[-4:])
    der[at] ^= 0x01
    codes["tampered"] = _code(x509.load_der_x509_certificate(bytes(der)), trust)

    codes["expired"] = _code(cert, trust, now=NOW + dt.timedelta(days=31))
    codes["not-yet-valid"] = _code(cert, trust, now=NOW - dt.timedelta(days=1))

    other = idn.create_account_ca(idn.new_account_id(), now=NOW)
    codes["other-account"] = _code(make_device(other)[1], trust)

    crl = idn.issue_crl(ca, [idn.Revoked(cert.serial_number, NOW)], number=1, now=NOW)
    codes["revoked"] = _code(cert, trust.with_crl(crl))

    liar_key = idn.generate_device_key()
    victim = idn.device_id_for(idn.generate_device_key().public_key())
    liar = idn.build_device_cert(ca, liar_key.public_key(), device_id=victim, now=NOW)
    codes["device-id-mismatch"] = _code(liar, trust)

    codes["self"] = _code(cert, trust, self_device=idn.device_id_for(key.public_key()))
    codes["wrong-device"] = _code(cert, trust, expected_device=victim)

    assert codes == {
        "tampered": "cert-signature-invalid",
        "expired": "cert-expired",
        "not-yet-valid": "cert-not-yet-valid",
        "other-account": "cert-wrong-account",
        "revoked": "cert-revoked",
        "device-id-mismatch": "cert-device-id-mismatch",
        "self": "cert-is-self",
        "wrong-device": "cert-wrong-device",
    }


def test_clock_skew_allowance(ca: idn.AccountCA) -> None:
    trust = idn.TrustAnchor.from_ca(ca.cert)
    _, cert = make_device(ca)
    end = cert.not_valid_after_utc
    idn.verify_device_cert(cert, trust, now=end + dt.timedelta(minutes=4))
    with pytest.raises(VerificationError):
        idn.verify_device_cert(cert, trust, now=end + dt.timedelta(minutes=6))


def test_ca_cert_is_not_a_device(ca: idn.AccountCA) -> None:
    trust = idn.TrustAnchor.from_ca(ca.cert)
    assert _code(ca.cert, trust) == "cert-invalid"


# ------------------------------------------------------------------ CRL


def test_crl_gossip_keeps_highest_number(ca: idn.AccountCA) -> None:
    trust = idn.TrustAnchor.from_ca(ca.cert)
    crl1 = idn.issue_crl(ca, [], number=1, now=NOW)
    crl2 = idn.issue_crl(ca, [idn.Revoked(5, NOW)], number=2, now=NOW)
    t2 = trust.with_crl(crl1).with_crl(crl2)
    assert t2.crl_number == 2
    assert t2.with_crl(crl1) is t2  # older loses
    other = idn.create_account_ca(idn.new_account_id(), now=NOW)
    with pytest.raises(VerificationError) as e:
        trust.with_crl(idn.issue_crl(other, [], number=9, now=NOW))
    assert e.value.code == "crl-wrong-issuer"
    with pytest.raises(IdentityError) as e2:
        idn.load_crl(b"nonsense")
    assert e2.value.code == "crl-malformed"


# ------------------------------------------------------------------ signatures


def test_signature_is_domain_separated() -> None:
    key = idn.generate_device_key()
    sig = idn.sign(key, "manifest", b"data")
    idn.verify_signature(key.public_key(), "manifest", b"data", sig)
    with pytest.raises(VerificationError) as e:
        idn.verify_signature(key.public_key(), "envelope", b"data", sig)
    assert e.value.code == "signature-invalid"


# ------------------------------------------------------------------ openssl agrees


def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([OPENSSL, *args], capture_output=True, text=True, timeout=30, check=False)


def test_openssl_verifies_device_cert_and_reads_crl(ca: idn.AccountCA, tmp_path: Path) -> None:
    _, cert = make_device(ca, now=dt.datetime.now(dt.UTC))
    other = idn.create_account_ca(idn.new_account_id(), now=dt.datetime.now(dt.UTC))
    _, stranger = make_device(other, now=dt.datetime.now(dt.UTC))
    (tmp_path / "account-ca.crt").write_bytes(idn.cert_to_pem(ca.cert))
    (tmp_path / "device.crt").write_bytes(idn.cert_to_pem(cert))
    (tmp_path / "stranger.crt").write_bytes(idn.cert_to_pem(stranger))
    ok = _openssl(
        "verify", "-CAfile", str(tmp_path / "account-ca.crt"), str(tmp_path / "device.crt")
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().endswith(": OK")
    bad = _openssl(
        "verify", "-CAfile", str(tmp_path / "account-ca.crt"), str(tmp_path / "stranger.crt")
    )
    assert bad.returncode != 0

    crl = idn.issue_crl(
        ca, [idn.Revoked(cert.serial_number, dt.datetime.now(dt.UTC))], number=7, now=NOW
    )
    (tmp_path / "crl.pem").write_bytes(idn.crl_to_pem(crl))
    text = _openssl("crl", "-in", str(tmp_path / "crl.pem"), "-noout", "-text")
    assert text.returncode == 0, text.stderr
    assert f"{cert.serial_number:X}".rjust(32, "0") in text.stdout.replace(":", "").upper()
    assert "CRL Number" in text.stdout
    assert "7" in text.stdout.split("CRL Number:")[1].split("\n")[1]
    crl_check = _openssl(
        "crl",
        "-in",
        str(tmp_path / "crl.pem"),
        "-CAfile",
        str(tmp_path / "account-ca.crt"),
        "-noout",
    )
    assert crl_check.returncode == 0, crl_check.stderr
    assert "verify OK" in crl_check.stderr + crl_check.stdout
    assert os.path.getsize(tmp_path / "crl.pem") > 0
