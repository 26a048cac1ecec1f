"""The browser pairing page's invite URL: made and parsed by ``handoffd.wire.invite``."""

from __future__ import annotations

import pytest

from handoffd.errors import HandoffError
from handoffd.wire.invite import invite_url, page_url, pairs_in_browser, parse_invite

TOKEN = "A" * 43
FP = "sha256:" + "ab" * 32


def test_page_url_round_trips_like_the_handoff_url() -> None:
    page = page_url("https://h.example:8443/", TOKEN, FP)
    assert page == f"https://h.example:8443/pair#token={TOKEN}&fp={FP}"
    assert parse_invite(page) == parse_invite(invite_url("https://h.example:8443", TOKEN, FP))
    bare = parse_invite(page_url("https://h.example/base", TOKEN, None))
    assert (bare.server_url, bare.token, bare.fingerprint) == (
        "https://h.example/base",
        TOKEN,
        None,
    )


@pytest.mark.parametrize(
    "text",
    [
        f"https://h.example/pair?token={TOKEN}",  # the token must be in the fragment
        f"https://h.example/other#token={TOKEN}",
        "https://h.example/pair#token=short",
        f"https://h.example/pair#token={TOKEN}&token={TOKEN}",
        f"https://h.example/pair#token={TOKEN}&x=1",
        f"https://h.example/pair#token={TOKEN}&fp=sha256:zz",
        f"https://user@h.example/pair#token={TOKEN}",
        "https://h.example/pair#",
    ],
)
def test_malformed_page_urls_are_refused(text: str) -> None:
    with pytest.raises(HandoffError) as err:
        parse_invite(text)
    assert err.value.code == "invite-malformed"


def test_a_browser_pairs_over_https_or_loopback_http_only() -> None:
    assert pairs_in_browser("https://h.example")
    assert pairs_in_browser("http://127.0.0.1:8080")
    assert pairs_in_browser("http://localhost:8080")
    assert not pairs_in_browser("http://h.example")
    assert not pairs_in_browser("http://192.168.1.2:8080")
