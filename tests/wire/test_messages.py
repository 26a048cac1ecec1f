"""The invite, server WebSocket messages and the relay hello as both sides read and write them."""

from __future__ import annotations

import secrets

import pytest

from handoffd import identity
from handoffd.errors import HandoffError, ProtocolError, ServerError
from handoffd.server import pairing
from handoffd.wire import auth, invite, messages, relayhello

FP = "sha256:" + "ab" * 32


def test_invite_made_by_the_server_parses_on_the_device() -> None:
    made = pairing.new_secrets()
    url = invite.invite_url("https://example.org:8443/", made.token, FP)
    parsed = invite.parse_invite(url)
    assert parsed == invite.Invite("https://example.org:8443", made.token, None, FP)
    typed = pairing.format_code(made.code).lower()
    by_code = invite.parse_invite(typed, "https://example.org:8443", FP)
    assert by_code.code == made.code
    assert by_code.token is None


@pytest.mark.parametrize(
    "text",
    [
        "handoff://pair?server=https://x&token=short",
        "handoff://pair?server=https://x&token=" + "a" * 43 + "&token=" + "b" * 43,
        "handoff://pair?server=ftp://x&token=" + "a" * 43,
        "handoff://pair?server=https://x&token=" + "a" * 43 + "&fp=md5:00",
        "handoff://pair?server=https://x&token=" + "a" * 43 + "#frag",
        "handoff://other?server=https://x&token=" + "a" * 43,
        "K7QF-2M9X-HT4P",  # a code without the server
        "x" * 3000,
    ],
)
def test_malformed_invite_is_refused(text: str) -> None:
    with pytest.raises(HandoffError) as e:
        invite.parse_invite(text)
    assert e.value.code == "invite-malformed"


def _device() -> str:
    return identity.device_id_for(identity.generate_device_key().public_key())


def test_relay_ticket_and_offer() -> None:
    peer = _device()
    ticket = messages.parse_relay_ticket(
        {"type": "relay-ticket", "session": "s", "token": "t", "to": peer, "expires_in": 30}
    )
    assert ticket == messages.RelayTicket("s", "t", peer, 30.0, initiator=True)
    offer = messages.parse_relay_ticket(
        {"type": "relay-offer", "session": "s", "token": "t", "from": peer, "expires_in": 2.5}
    )
    assert offer == messages.RelayTicket("s", "t", peer, 2.5, initiator=False)


@pytest.mark.parametrize(
    "change",
    [
        {"session": ""},
        {"session": "s" * 65},
        {"token": "t" * 129},
        {"token": 5},
        {"from": "not-a-device"},
        {"expires_in": "30"},
        {"expires_in": True},
    ],
)
def test_malformed_relay_offer_is_dropped(change: dict[str, object]) -> None:
    message: dict[str, object] = {
        "type": "relay-offer",
        "session": "s",
        "token": "t",
        "from": _device(),
        "expires_in": 30,
    }
    message.update(change)
    assert messages.parse_relay_ticket(message) is None


def test_signal_presence_and_errors() -> None:
    envelope = secrets.token_bytes(100)
    sender = _device()
    assert messages.parse_signal({"from": sender, "data": auth.b64e(envelope)}) == (
        sender,
        envelope,
    )
    assert messages.parse_signal({"from": sender, "data": "!!"}) is None
    too_big = auth.b64e(b"x" * (messages.MAX_SIGNAL + 1))
    assert messages.parse_signal({"from": sender, "data": too_big}) is None
    assert messages.parse_online({"online": [sender]}) == frozenset({sender})
    assert messages.parse_online({"online": [sender, 5]}) is None
    error = messages.server_error({"error": {"code": "c" * 100, "message": "m" * 400}})
    assert (len(error.code), len(error.message)) == (64, 300)
    assert messages.server_error({"error": "x"}).code == "server"
    for text in ("[1]", "{}", '{"type": 5}', "{", "[" * 100_000):
        with pytest.raises(ServerError) as e:
            messages.json_message(text, "test")
        assert e.value.code == "server-bad-response"


def test_relay_hello_round_trip_and_malformed() -> None:
    assert relayhello.parse_hello(relayhello.encode_hello(None)) is None
    assert relayhello.parse_hello(relayhello.encode_hello("cert-revoked")) == "cert-revoked"
    for data in (
        b"{not json",
        b'{"relay": 2, "ok": true}',
        b'{"relay": 1, "ok": true, "code": "x"}',
        b'{"relay": 1, "ok": false, "code": "Not Kebab"}',
        b'{"relay": 1, "ok": false}',
        relayhello.encode_hello("x") + b" " * relayhello.MAX_HELLO,
    ):
        with pytest.raises(ProtocolError) as e:
            relayhello.parse_hello(data)
        assert e.value.code == "hello-malformed"
