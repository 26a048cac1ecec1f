"""The shared wire module: what a device signs, the server's check accepts; anything tampered fails."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

import pytest

from handoffd import identity
from handoffd.errors import ServerError
from handoffd.wire import auth


def _verify(headers: dict[str, str], key_pub: object, **request: object) -> None:
    signed = auth.parse_signature_headers(headers)
    auth.RequestVerifier().verify(signed, key_pub, **request)  # type: ignore[arg-type]


def test_signed_request_verifies_on_the_server_side() -> None:
    key = identity.generate_device_key()
    now = time.time()
    body = b'{"name":"laptop"}'
    headers = auth.sign_request(key, "patch", "/v1/devices/x?y=1", body, now=now)
    assert headers[auth.H_DEVICE] == identity.device_id_for(key.public_key())
    # The server sees the method upper-case and the same path and body.
    _verify(
        headers, key.public_key(), method="PATCH", path_qs="/v1/devices/x?y=1", body=body, now=now
    )


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/invites", b"{}"),  # another method
        ("GET", "/v1/invites?x=2", b"{}"),  # another query
        ("GET", "/v1/invites", b"{ }"),  # another body
    ],
)
def test_tampered_request_fails(method: str, path: str, body: bytes) -> None:
    key = identity.generate_device_key()
    now = time.time()
    headers = auth.sign_request(key, "GET", "/v1/invites", b"{}", now=now)
    with pytest.raises(ServerError) as e:
        _verify(headers, key.public_key(), method=method, path_qs=path, body=body, now=now)
    assert e.value.code == "auth-invalid"


def test_request_by_another_key_replayed_or_stale_fails() -> None:
    key, other = identity.generate_device_key(), identity.generate_device_key()
    now = time.time()
    headers = auth.sign_request(key, "GET", "/v1/devices", b"", now=now)
    request = {"method": "GET", "path_qs": "/v1/devices", "body": b""}
    with pytest.raises(ServerError) as e:
        _verify(headers, other.public_key(), now=now, **request)
    assert e.value.code == "auth-invalid"
    verifier = auth.RequestVerifier()
    signed = auth.parse_signature_headers(headers)
    verifier.verify(signed, key.public_key(), now=now, **request)  # type: ignore[arg-type]
    with pytest.raises(ServerError) as e:
        verifier.verify(signed, key.public_key(), now=now, **request)  # type: ignore[arg-type]
    assert e.value.code == "auth-replayed"
    with pytest.raises(ServerError) as e:
        _verify(headers, key.public_key(), now=now + auth.REQUEST_WINDOW + 1, **request)
    assert e.value.code == "auth-stale"


def _over_json(message: Mapping[str, object]) -> dict[str, object]:
    result: dict[str, object] = json.loads(json.dumps(message))
    return result


def test_challenge_round_trip() -> None:
    key = identity.generate_device_key()
    device_id = identity.device_id_for(key.public_key())
    challenge = auth.new_challenge()
    assert len(challenge) == auth.WS_NONCE_LEN
    seen = auth.parse_challenge(_over_json(auth.challenge_message(challenge, 1234.5)))
    assert seen == challenge
    answer = _over_json(auth.auth_message(key, seen, session="s1", token="t1"))
    assert answer["session"] == "s1"
    assert answer["token"] == "t1"
    got_id, signature = auth.parse_auth(answer)
    assert got_id == device_id
    auth.verify_ws_answer(key.public_key(), challenge, got_id, signature)


def _flip(text: str, at: int = 10) -> str:
    """``text`` with one base64 character in the middle changed (the last ones may be padding
    bits, so changing them can leave the decoded bytes as they were)."""
    return text[:at] + ("B" if text[at] == "A" else "A") + text[at + 1 :]


def test_tampered_challenge_answer_fails() -> None:
    key, other = identity.generate_device_key(), identity.generate_device_key()
    challenge = auth.new_challenge()
    device_id, signature = auth.parse_auth(auth.auth_message(key, challenge))
    cases = [
        (key.public_key(), auth.new_challenge(), device_id, signature),  # another challenge
        (other.public_key(), challenge, device_id, signature),  # another device's key
        (key.public_key(), challenge, identity.device_id_for(other.public_key()), signature),
        (key.public_key(), challenge, device_id, _flip(signature)),  # changed signature
        (key.public_key(), challenge, device_id, "not base64!"),
    ]
    for public, nonce, claimed, sig in cases:
        with pytest.raises(ServerError) as e:
            auth.verify_ws_answer(public, nonce, claimed, sig)
        assert e.value.code == "auth-invalid"


@pytest.mark.parametrize(
    "message",
    [
        {"type": "welcome", "nonce": "AAAA"},
        {"type": "challenge"},
        {"type": "challenge", "nonce": 5},
        {"type": "challenge", "nonce": "***"},
        {"type": "challenge", "nonce": ""},
        {"type": "challenge", "nonce": "A" * 200},
    ],
)
def test_malformed_challenge_is_refused(message: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"challenge|base64"):
        auth.parse_challenge(message)


@pytest.mark.parametrize(
    ("message", "why"),
    [
        ({"type": "hello"}, "the first message must be auth"),
        ({"type": "auth", "signature": "x"}, "auth needs a device_id"),
        ({"type": "auth", "device_id": "nope", "signature": "x"}, "auth needs a device_id"),
        ({"type": "auth", "device_id": None, "signature": "x"}, "auth needs a device_id"),
    ],
)
def test_malformed_auth_is_refused(message: dict[str, object], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        auth.parse_auth(message)


def test_auth_without_signature_is_refused() -> None:
    device_id = identity.device_id_for(identity.generate_device_key().public_key())
    with pytest.raises(ValueError, match="auth needs a signature"):
        auth.parse_auth({"type": "auth", "device_id": device_id, "signature": 7})
