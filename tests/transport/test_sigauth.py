"""The hello and proof of LAN signaling v2 (pure code): strict, bounded, bound to the TLS
certificate; real certificates and signatures."""

from __future__ import annotations

import time

import msgpack
import pytest

from handoffd.transport import sigauth
from handoffd.transport.signaling import server_tls
from tests.transport.helpers import Account

ACCOUNT = Account()
LISTENER, CALLER = ACCOUNT.device(), ACCOUNT.device()
TLS = server_tls()[1]


def _hello(**fields: object) -> bytes:
    value: dict[str, object] = {"v": 2, "nonce": bytes(32), "mac": bytes(32)}
    value.update(fields)
    return msgpack.packb({k: v for k, v in value.items() if v is not None}, use_bin_type=True)


def test_a_hello_round_trips_only_for_its_account_and_tls_certificate() -> None:
    body, nonce = sigauth.make_hello(ACCOUNT.trust, TLS)
    assert sigauth.check_hello(body, ACCOUNT.trust, TLS) == nonce
    with pytest.raises(sigauth.SignalingAuthError) as e:
        sigauth.check_hello(body, Account().trust, TLS)
    assert e.value.code == "hello-refused"
    with pytest.raises(sigauth.SignalingAuthError) as e:
        sigauth.check_hello(body, ACCOUNT.trust, server_tls()[1])
    assert e.value.code == "hello-refused"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "hello-malformed"),
        (b"\xc1", "hello-malformed"),
        (b"\x00" * 129, "hello-malformed"),
        (msgpack.packb([2, bytes(32), bytes(32)]), "hello-malformed"),
        (_hello(extra=1), "hello-malformed"),
        (_hello(mac=None), "hello-malformed"),
        (_hello(v=True), "hello-malformed"),
        (_hello(v="2"), "hello-malformed"),
        (_hello(v=1), "hello-version"),
        (_hello(v=3), "hello-version"),
        (_hello(nonce=bytes(31)), "hello-malformed"),
        (_hello(nonce="x" * 32), "hello-malformed"),
        (_hello(mac=bytes(33)), "hello-malformed"),
        (_hello(), "hello-refused"),
    ],
)
def test_bad_hellos(body: bytes, code: str) -> None:
    with pytest.raises(sigauth.SignalingAuthError) as e:
        sigauth.check_hello(body, ACCOUNT.trust, TLS)
    assert e.value.code == code


def test_a_proof_holds_only_for_its_device_nonce_and_tls_certificate() -> None:
    nonce = bytes(range(32))
    now = time.time()

    def check(proof: bytes, **over: object) -> None:
        args: dict[str, object] = {
            "local": CALLER.local,
            "expected_device": LISTENER.id,
            "nonce": nonce,
            "tls_cert_der": TLS,
            "now": now,
        }
        args.update(over)
        sigauth.check_proof(proof, **args)  # type: ignore[arg-type]

    def proof() -> bytes:
        return sigauth.make_proof(LISTENER.local, nonce, TLS, now=now)

    check(proof())
    cases: dict[str, dict[str, object]] = {
        "another device": {"expected_device": CALLER.id},
        "another nonce": {"nonce": bytes(32)},
        "another TLS certificate": {"tls_cert_der": server_tls()[1]},
        "another account": {"local": Account().device().local},
        "too late": {"now": now + 600},
    }
    for name, over in cases.items():
        with pytest.raises(sigauth.SignalingAuthError) as e:
            check(proof(), **over)
        assert e.value.code == "signaling-unauthenticated", name
    replayed = proof()
    check(replayed)
    with pytest.raises(sigauth.SignalingAuthError) as e:
        check(replayed)
    assert "envelope-replayed" in e.value.message
    with pytest.raises(sigauth.SignalingAuthError):
        check(b"\xc1" * 10)
