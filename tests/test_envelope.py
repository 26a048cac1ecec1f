"""Signed envelopes: each rejection with its own code, and the bounded replay cache."""

from __future__ import annotations

import contextlib
import datetime as dt

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from handoffd import envelope as env
from handoffd import identity as idn
from handoffd.errors import EnvelopeError, VerificationError

T0 = 1_795_000_000.0
NOW = dt.datetime.fromtimestamp(T0, dt.UTC)


class Device:
    def __init__(self, ca: idn.AccountCA) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.cert = idn.issue_device_cert(ca, idn.make_csr(self.key), now=NOW)
        self.der = idn.cert_to_der(self.cert)
        self.id = idn.device_id_for(self.key.public_key())


@pytest.fixture
def world() -> tuple[idn.AccountCA, Device, Device, idn.TrustAnchor]:
    ca = idn.create_account_ca(idn.new_account_id(), now=NOW)
    return ca, Device(ca), Device(ca), idn.TrustAnchor.from_ca(ca.cert)


def _open(data: bytes, to: Device, trust: idn.TrustAnchor, **kw: object) -> env.Opened:
    args: dict[str, object] = {
        "purpose": "webrtc-offer",
        "recipient": to.id,
        "trust": trust,
        "now": T0 + 1,
        "replay": env.ReplayCache(),
    }
    args.update(kw)
    return env.open_envelope(data, **args)  # type: ignore[arg-type]


def _code(data: bytes, to: Device, trust: idn.TrustAnchor, **kw: object) -> str:
    with pytest.raises(VerificationError) as e:
        _open(data, to, trust, **kw)
    return e.value.code


def test_roundtrip(world: tuple[idn.AccountCA, Device, Device, idn.TrustAnchor]) -> None:
    _, a, b, trust = world
    sealed = env.seal(a.key, a.der, purpose="webrtc-offer", recipient=b.id, payload=b"sdp", now=T0)
    opened = _open(sealed, b, trust)
    assert opened.payload == b"sdp"
    assert opened.sender.device_id == a.id
    assert len(opened.nonce) == 16
    assert opened.expires_at - opened.issued_at == env.DEFAULT_LIFETIME


def test_each_rejection_has_its_own_code(
    world: tuple[idn.AccountCA, Device, Device, idn.TrustAnchor],
) -> None:
    ca, a, b, trust = world
    good = env.seal(a.key, a.der, purpose="webrtc-offer", recipient=b.id, payload=b"x", now=T0)
    codes: dict[str, str] = {}

    cache = env.ReplayCache()
    _open(good, b, trust, replay=cache)
    codes["replayed"] = _code(good, b, trust, replay=cache)
    codes["expired"] = _code(good, b, trust, now=T0 + 120)
    codes["not-yet-valid"] = _code(good, b, trust, now=T0 - 120)
    codes["other-recipient"] = _code(good, a, trust)
    codes["wrong-context"] = _code(good, b, trust, purpose="webrtc-answer")

    # A signature made under another context (a manifest signature) over the same body.
    outer = msgpack.unpackb(good)
    outer["sig"] = idn.sign(a.key, "manifest", outer["body"])
    codes["other-context-signature"] = _code(msgpack.packb(outer), b, trust)

    # Payload changed after signing.
    fields = msgpack.unpackb(outer["body"])
    fields[6] = b"evil"
    forged = dict(msgpack.unpackb(good), body=msgpack.packb(fields))
    codes["tampered"] = _code(msgpack.packb(forged), b, trust)

    # Sender field naming someone else than the certificate.
    fields = msgpack.unpackb(msgpack.unpackb(good)["body"])
    fields[1] = b.id
    body = msgpack.packb(fields)
    liar = {"body": body, "cert": a.der, "sig": idn.sign(a.key, "envelope", body)}
    codes["sender-mismatch"] = _code(msgpack.packb(liar), b, trust)

    # Lifetime over 60 s, validly signed.
    fields = msgpack.unpackb(msgpack.unpackb(good)["body"])
    fields[5] = fields[4] + 3_600_000
    body = msgpack.packb(fields)
    long = {"body": body, "cert": a.der, "sig": idn.sign(a.key, "envelope", body)}
    codes["lifetime"] = _code(msgpack.packb(long), b, trust)

    other_ca = idn.create_account_ca(idn.new_account_id(), now=NOW)
    stranger = Device(other_ca)
    foreign = env.seal(
        stranger.key, stranger.der, purpose="webrtc-offer", recipient=b.id, payload=b"x", now=T0
    )
    codes["other-account"] = _code(foreign, b, trust)

    crl = idn.issue_crl(ca, [idn.Revoked(a.cert.serial_number, NOW)], number=1, now=NOW)
    codes["revoked"] = _code(good, b, trust.with_crl(crl))

    codes["oversize"] = _code(b"\x00" * (env.MAX_ENVELOPE + 1), b, trust)
    codes["malformed"] = _code(b"\xc1", b, trust)

    assert codes == {
        "replayed": "envelope-replayed",
        "expired": "envelope-expired",
        "not-yet-valid": "envelope-not-yet-valid",
        "other-recipient": "envelope-wrong-recipient",
        "wrong-context": "envelope-wrong-context",
        "other-context-signature": "envelope-bad-signature",
        "tampered": "envelope-bad-signature",
        "sender-mismatch": "envelope-sender-mismatch",
        "lifetime": "envelope-lifetime",
        "other-account": "cert-wrong-account",
        "revoked": "cert-revoked",
        "oversize": "envelope-oversize",
        "malformed": "envelope-malformed",
    }


@pytest.mark.parametrize(
    "keys",
    [
        ("body", b"cert", "sig"),  # the fuzz finding: sorted() of str and bytes raised TypeError
        (b"body", "cert", b"sig"),
        (b"body", b"cert", b"sig"),
        ("body", "cert", "sig", b"sig"),
    ],
)
def test_map_keys_of_the_wrong_type_are_malformed(
    world: tuple[idn.AccountCA, Device, Device, idn.TrustAnchor], keys: tuple[str | bytes, ...]
) -> None:
    _, a, b, trust = world
    good = msgpack.unpackb(
        env.seal(a.key, a.der, purpose="webrtc-offer", recipient=b.id, payload=b"x", now=T0)
    )
    values = [good["body"], good["cert"], good["sig"], good["sig"]]
    mixed = msgpack.packb(dict(zip(keys, values, strict=False)), use_bin_type=True)
    assert _code(mixed, b, trust) == "envelope-malformed"


def test_seal_refuses_long_lifetime(
    world: tuple[idn.AccountCA, Device, Device, idn.TrustAnchor],
) -> None:
    _, a, b, _ = world
    with pytest.raises(ValueError, match="lifetime"):
        env.seal(a.key, a.der, purpose="p", recipient=b.id, payload=b"", now=T0, lifetime=61)


def test_replay_cache_forgets_after_expiry_and_is_bounded() -> None:
    cache = env.ReplayCache(max_entries=3)
    for i in range(3):
        cache.check_and_add("A", bytes([i]) * 16, forget_after=T0 + 10, now=T0)
    with pytest.raises(EnvelopeError) as e:
        cache.check_and_add("A", b"\x09" * 16, forget_after=T0 + 10, now=T0)
    assert e.value.code == "envelope-replay-cache-full"
    cache.check_and_add("A", b"\x09" * 16, forget_after=T0 + 30, now=T0 + 11)
    assert len(cache) == 1
    with pytest.raises(EnvelopeError) as e:
        cache.check_and_add("A", b"\x09" * 16, forget_after=T0 + 30, now=T0 + 12)
    assert e.value.code == "envelope-replayed"


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_only_raise_verification_errors(data: bytes) -> None:
    ca = _FUZZ_CA
    with pytest.raises(VerificationError):
        env.open_envelope(
            data,
            purpose="webrtc-offer",
            recipient=_FUZZ_DEV.id,
            trust=idn.TrustAnchor.from_ca(ca.cert),
            now=T0,
            replay=env.ReplayCache(),
        )


_FUZZ_CA = idn.create_account_ca(idn.new_account_id(), now=NOW)
_FUZZ_DEV = Device(_FUZZ_CA)


@settings(max_examples=1500, deadline=None)
@given(st.data())
def test_mutated_envelopes_only_raise_verification_errors(data: st.DataObject) -> None:
    sealed = bytearray(
        env.seal(
            _FUZZ_DEV.key,
            _FUZZ_DEV.der,
            purpose="webrtc-offer",
            recipient=_FUZZ_DEV.id,
            payload=b"payload",
            now=T0,
        )
    )
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(sealed) - 1))
        sealed[pos] ^= data.draw(st.integers(1, 255))
    with contextlib.suppress(VerificationError):
        env.open_envelope(
            bytes(sealed),
            purpose="webrtc-offer",
            recipient=_FUZZ_DEV.id,
            trust=idn.TrustAnchor.from_ca(_FUZZ_CA.cert),
            now=T0,
            replay=env.ReplayCache(),
        )
