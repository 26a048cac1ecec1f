"""The one bounded strict msgpack decoder and the decoders built on it."""

from __future__ import annotations

import datetime as dt

import msgpack
import pytest

from handoffd import envelope, identity
from handoffd.errors import HandoffError
from handoffd.proto import strict
from handoffd.transport import sigauth, sigframes

BOUNDS = {"max_str": 8, "max_bin": 8, "max_array": 2, "max_map": 2}


def test_values_within_the_bounds_decode() -> None:
    data = msgpack.packb({"a": [1, b"xy"], "b": "text"}, use_bin_type=True)
    assert strict.unpack(data, **BOUNDS) == {"a": [1, b"xy"], "b": "text"}


@pytest.mark.parametrize(
    "data",
    [
        msgpack.packb({"a": 1, b"b": 2}, use_bin_type=True),  # mixed text and binary keys
        msgpack.packb({b"a": 1}, use_bin_type=True),  # binary key
        msgpack.packb({1: 1}, use_bin_type=True),  # integer key
        msgpack.packb("x" * 9, use_bin_type=True),  # string over its bound
        msgpack.packb(b"x" * 9, use_bin_type=True),  # bytes over their bound
        msgpack.packb([1, 2, 3], use_bin_type=True),  # array over its bound
        msgpack.packb({"a": 1, "b": 2, "c": 3}, use_bin_type=True),  # map over its bound
        msgpack.packb(msgpack.ExtType(1, b"x"), use_bin_type=True),  # extension type
        msgpack.packb(1) + b"\x00",  # trailing bytes
        b"\x92\x01",  # truncated
        b"\x91" * 100_000,  # nesting too deep
        b"\xc1",  # never used byte
        msgpack.packb("\udcff", use_bin_type=True, unicode_errors="surrogateescape"),  # not UTF-8
    ],
)
def test_anything_else_is_refused(data: bytes) -> None:
    with pytest.raises(strict.MsgpackError) as e:
        strict.unpack(data, **BOUNDS)
    assert e.value.code == "msgpack-malformed"


def test_signaling_error_frame_with_binary_key_is_malformed() -> None:
    body = msgpack.packb({"code": "x", b"message": "y"}, use_bin_type=True)
    with pytest.raises(HandoffError, match="not valid msgpack"):
        sigframes.decode_error(body)


def _trust() -> identity.TrustAnchor:
    ca = identity.create_account_ca(identity.new_account_id(), now=dt.datetime.now(dt.UTC))
    crl = identity.issue_crl(ca, [], number=1, now=dt.datetime.now(dt.UTC))
    return identity.TrustAnchor.from_ca(ca.cert, crl)


def test_mixed_key_envelope_is_malformed_not_a_crash() -> None:
    """Regression (fuzz finding): text and binary keys together made sorted() raise TypeError."""
    data = msgpack.packb({"body": b"x", "cert": b"y", b"sig": b"z"}, use_bin_type=True)
    with pytest.raises(HandoffError) as e:
        envelope.open_envelope(
            data,
            purpose="signal",
            recipient="x",
            trust=_trust(),
            now=0.0,
            replay=envelope.ReplayCache(),
        )
    assert e.value.code == "envelope-malformed"


def test_mixed_key_signaling_hello_is_malformed_not_a_crash() -> None:
    """Regression (fuzz finding): the hello is read before authentication; TypeError was a crash."""
    body = msgpack.packb({"v": 2, "nonce": b"n" * 32, b"mac": b"m" * 32}, use_bin_type=True)
    with pytest.raises(HandoffError) as e:
        sigauth.check_hello(body, _trust(), b"cert")
    assert e.value.code == "hello-malformed"
