"""Pairing codes (pure): CODE-TAG@server, the pin tag, and what wrong inputs are told."""

from __future__ import annotations

import pytest

from handoffd.errors import HandoffError
from handoffd.wire import invite

FP = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
CODE = "K7QF2M9XHT4P"


def test_pairing_code_round_trip() -> None:
    text = invite.pairing_code("https://example.org:8443", CODE, FP)
    tag = invite.pin_tag(CODE, FP)
    assert text == f"K7QF-2M9X-HT4P-{tag}@example.org:8443"
    parsed = invite.parse_invite(text.lower())  # typed in any case
    assert parsed == invite.Invite("https://example.org:8443", None, CODE, None, tag)
    assert invite.pair_command("https://example.org:8443", CODE, FP) == f"handoff pair {text}"


def test_the_tag_binds_the_secret_and_the_fingerprint() -> None:
    tags = {invite.pin_tag(CODE, f"sha256:{i:064x}") for i in range(64)}
    assert len(tags) > 60  # 20 bits: distinct for nearly every fingerprint
    assert invite.pin_tag(CODE, FP) != invite.pin_tag("K7QF2M9XHT4Q", FP)
    # The locator is not part of the key: only the secret is.
    assert invite.pin_tag("0000" + CODE[4:], FP) == invite.pin_tag(CODE, FP)
    assert len(invite.pin_tag(CODE, OTHER)) == invite.TAG_LEN


def test_servers_in_codes() -> None:
    assert invite.short_server("https://h:8443/") == "h:8443"
    assert invite.short_server("https://h") == "h"
    assert invite.short_server("http://h:80") == "http://h:80"
    assert invite.short_server("https://h/prefix") == "https://h/prefix"
    plain = invite.parse_invite(invite.pairing_code("http://10.0.0.1:8080", CODE, None))
    assert plain.server_url == "http://10.0.0.1:8080"
    assert plain.tag is None
    # A tag over http pins nothing: dropped.
    assert invite.parse_invite(f"{CODE}ABCD@http://h:1").tag is None
    assert invite.parse_invite(f"{CODE}@[::1]:8443").server_url == "https://[::1]:8443"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("garbage", "not an invite code"),
        ("https://example.org:8443", "web address, not an invite"),
        ("http://example.org/add-device", "web address, not an invite"),
        ("K7QF-2M9X-HT4P", "does not say which server"),
        ("K7QF-2M9X-HT4P@", "nothing after '@'"),
        ("K7QF-2M9X-HT4P@ftp://h", "must be http(s)"),
        ("K7QF-2M9X-HT4P-AB@h", "not an invite code"),
    ],
)
def test_wrong_inputs_say_what_they_look_like(text: str, said: str) -> None:
    with pytest.raises(HandoffError) as info:
        invite.parse_invite(text)
    assert info.value.code == "invite-malformed"
    assert said in info.value.message


def test_expiry_is_written_one_way() -> None:
    text = invite.expiry_text(1_000_600.0, 1_000_000.0)
    assert text.startswith("in 10 min (at ")
    assert text.endswith("), single use")
