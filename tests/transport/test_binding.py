"""Pure checks of the WebRTC binding: strict SDP fingerprints, signed payloads, confirmations."""

from __future__ import annotations

import dataclasses
import secrets

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handoffd import identity as idn
from handoffd.errors import TransportError
from handoffd.transport.base import MAX_MESSAGE, LocalIdentity, PeerAuthError, check_message
from handoffd.transport.webrtc import binding as wb
from tests.transport.helpers import Account

FP256 = "FB:6A:90:41:C2:57:95:73:AF:70:03:AA:91:3F:54:D3:D9:4E:38:F9:FF:D5:9E:27:A8:CD:DD:28:71:09:B9:9D"
FP384 = ":".join(["D0"] * 48)
FP512 = ":".join(["DE"] * 64)
SIGNED = [("sha-256", FP256), ("sha-384", FP384), ("sha-512", FP512)]
SDP = (
    "v=0\r\no=- 4004464407 4004464407 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "a=group:BUNDLE 0\r\na=msid-semantic:WMS *\r\n"
    "m=application 37295 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 192.0.2.2\r\n"
    "a=mid:0\r\na=sctp-port:5000\r\na=max-message-size:262144\r\n"
    "a=candidate:f957a2332b1715da3b0ef8ba684454eb 1 udp 2130706431 192.0.2.2 37295 typ host\r\n"
    "a=end-of-candidates\r\na=ice-ufrag:NBth\r\na=ice-pwd:MVhP1xoXv4UNOcjb1ieg5F\r\n"
    f"a=fingerprint:sha-256 {FP256}\r\n"
    f"a=fingerprint:sha-384 {FP384}\r\n"
    f"a=fingerprint:sha-512 {FP512}\r\n"
    "a=setup:actpass\r\n"
)


def _code(sdp: str, signed: list[wb.Fingerprint] = SIGNED) -> str:
    with pytest.raises(PeerAuthError) as e:
        wb.check_sdp(sdp, signed)
    return e.value.code


def test_sdp_matching_signed_list() -> None:
    assert wb.sdp_fingerprints(SDP) == SIGNED
    wb.check_sdp(SDP, SIGNED)
    wb.check_sdp(SDP, list(reversed(SIGNED)))


def test_sdp_fingerprint_mismatches() -> None:
    other = FP256[:-2] + "00"
    assert _code(SDP.replace(FP256, other)) == "sdp-fingerprint-mismatch"
    # A fingerprint line dropped, or one more (even of a signed algorithm) is a mismatch.
    assert (
        _code(SDP.replace(f"a=fingerprint:sha-512 {FP512}\r\n", "")) == "sdp-fingerprint-mismatch"
    )
    extra = SDP.replace("a=setup", f"a=fingerprint:sha-256 {other}\r\na=setup")
    assert _code(extra) == "sdp-fingerprint-mismatch"
    assert _code(SDP, SIGNED[:1]) == "sdp-fingerprint-mismatch"
    no_fp = "".join(line + "\r\n" for line in SDP.split("\r\n")[:-1] if "fingerprint" not in line)
    assert _code(no_fp) == "sdp-fingerprint-mismatch"


@pytest.mark.parametrize(
    "sdp",
    [
        SDP.replace("sha-256", "sha-1"),  # an algorithm aiortc would silently ignore
        SDP.replace(FP256, FP256.lower()),
        SDP.replace(FP256, FP256[:-3]),
        SDP.replace(f"sha-256 {FP256}", f"sha-256  {FP256}"),
        SDP.replace("\r\n", "\n"),
        SDP[:-2],
        SDP.replace("v=0", "v=1"),
        SDP.replace("s=-", "s=\x1b[31m"),
        SDP.replace("s=-", "S=-"),
        SDP.replace("s=-", "s=é"),
        SDP + "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\n",
        SDP.replace("UDP/DTLS/SCTP webrtc-datachannel", "UDP/TLS/RTP/SAVPF 0"),
        SDP.replace("m=application 37295 UDP/DTLS/SCTP webrtc-datachannel\r\n", ""),
        SDP.replace("a=mid:0\r\n", "\r\n"),
        SDP + "a=x:" + "y" * wb.MAX_SDP + "\r\n",
    ],
)
def test_sdp_strictness(sdp: str) -> None:
    assert _code(sdp) == "sdp-invalid"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_sdp_parser_never_crashes(text: str) -> None:
    code = "accepted"
    try:
        wb.check_sdp(text, SIGNED)
    except PeerAuthError as exc:
        code = exc.code
    # Random text never matches the signed fingerprints; only the two codes ever come out.
    assert code in {"sdp-invalid", "sdp-fingerprint-mismatch"}


def test_description_roundtrip_and_strictness() -> None:
    cid, nonce = secrets.token_bytes(16), secrets.token_bytes(16)
    offer = wb.Description(cid=cid, sdp=SDP, fingerprints=SIGNED)
    assert wb.Description.unpack(offer.pack(), answer=False) == offer
    answer = dataclasses.replace(offer, offer_nonce=nonce)
    assert wb.Description.unpack(answer.pack(), answer=True) == answer
    # An offer is not an answer and vice versa.
    with pytest.raises(PeerAuthError) as e:
        wb.Description.unpack(offer.pack(), answer=True)
    assert e.value.code == "answer-malformed"
    with pytest.raises(PeerAuthError) as e:
        wb.Description.unpack(answer.pack(), answer=False)
    assert e.value.code == "offer-malformed"

    def bad(**changes: object) -> str:
        body: dict[str, object] = {"v": 1, "cid": cid, "sdp": SDP, "fp": [list(f) for f in SIGNED]}
        body.update(changes)
        with pytest.raises(PeerAuthError) as e:
            wb.Description.unpack(msgpack.packb(body, use_bin_type=True), answer=False)
        return e.value.code

    assert bad(v=2) == "offer-malformed"
    assert bad(cid=b"short") == "offer-malformed"
    assert bad(sdp=b"bytes") == "offer-malformed"
    assert bad(fp=[]) == "offer-malformed"
    assert bad(fp=[["sha-384", FP384]]) == "offer-malformed"  # no sha-256
    assert bad(fp=[list(SIGNED[0]), list(SIGNED[0])]) == "offer-malformed"
    assert bad(fp=[["sha-256", "zz"]]) == "sdp-invalid"
    assert bad(fp=[["sha-256"]]) == "offer-malformed"
    assert bad(extra=1) == "offer-malformed"
    assert bad(fp=[list(SIGNED[0])] * 9) == "offer-malformed"
    with pytest.raises(PeerAuthError) as e:
        wb.Description.unpack(b"\xc1", answer=False)
    assert e.value.code == "offer-malformed"


def _binding() -> wb.Binding:
    return wb.Binding(
        cid=secrets.token_bytes(16),
        offer_nonce=secrets.token_bytes(16),
        answer_nonce=secrets.token_bytes(16),
        offerer="A" * 32,
        answerer="B" * 32,
        offerer_fp=FP256,
        answerer_fp=FP256.replace("FB", "AA"),
    )


def test_confirmation_checks() -> None:
    key = idn.generate_device_key()
    pub = key.public_key()
    binding = _binding()
    exporter = secrets.token_bytes(32)
    msg = wb.make_confirm(binding, wb.ROLE_ANSWERER, key, exporter)
    wb.check_confirm(msg, binding, wb.ROLE_ANSWERER, pub, exporter)

    def code(
        data: bytes,
        b: wb.Binding = binding,
        role: str = wb.ROLE_ANSWERER,
        x: bytes = exporter,
    ) -> str:
        with pytest.raises(PeerAuthError) as e:
            wb.check_confirm(data, b, role, pub, x)
        return e.value.code

    # Reflection: our own confirmation sent back to us claims the wrong role.
    assert code(msg, role=wb.ROLE_OFFERER) == "confirm-wrong-role"
    # Another DTLS session (a relaying man in the middle): other exporter value.
    assert code(msg, x=secrets.token_bytes(32)) == "confirm-bad-signature"
    # Other nonces, other connection, other device.
    for change in (
        {"offer_nonce": bytes(16)},
        {"answer_nonce": bytes(16)},
        {"cid": bytes(16)},
        {"offerer": "C" * 32},
    ):
        assert code(msg, b=dataclasses.replace(binding, **change)) == "confirm-bad-signature"
    # The peer saw other DTLS fingerprints.
    assert (
        code(msg, b=dataclasses.replace(binding, answerer_fp=FP256)) == "dtls-fingerprint-mismatch"
    )
    # Signed by another key.
    other = wb.make_confirm(binding, wb.ROLE_ANSWERER, idn.generate_device_key(), exporter)
    assert code(other) == "confirm-bad-signature"
    assert code(b"\xc1") == "confirm-malformed"
    assert code(b"x" * 2000) == "confirm-malformed"
    assert code(msgpack.packb({"role": "answerer"}, use_bin_type=True)) == "confirm-malformed"
    assert (
        code(msgpack.packb({"role": "answerer", "fp": "x", "sig": b""}, use_bin_type=True))
        == "confirm-malformed"
    )


def test_local_identity_and_message_limit() -> None:
    account = Account()
    dev = account.device()
    assert dev.local.current_trust() is account.trust
    calls: list[int] = []

    def source() -> idn.TrustAnchor:
        calls.append(1)
        return account.trust

    live = LocalIdentity(key=dev.key, cert_der=dev.local.cert_der, trust=source)
    assert live.current_trust() is account.trust
    assert calls == [1]
    with pytest.raises(ValueError, match="device id"):
        LocalIdentity(
            key=idn.generate_device_key(), cert_der=dev.local.cert_der, trust=account.trust
        )
    check_message(b"x" * MAX_MESSAGE)
    with pytest.raises(TransportError) as e:
        check_message(b"x" * (MAX_MESSAGE + 1))
    assert e.value.code == "message-too-large"


def test_fingerprint_only_binding_is_asked_for_in_the_signed_description() -> None:
    """A browser's answer says ``bind: dtls-fingerprint`` (it cannot read the DTLS exporter)."""
    cid, nonce = secrets.token_bytes(16), secrets.token_bytes(16)
    plain = wb.Description(cid=cid, sdp=SDP, fingerprints=SIGNED, offer_nonce=nonce)
    assert plain.uses_exporter
    assert "bind" not in msgpack.unpackb(plain.pack())
    browser = dataclasses.replace(plain, bind=wb.BIND_FINGERPRINT)
    back = wb.Description.unpack(browser.pack(), answer=True)
    assert back == browser
    assert not back.uses_exporter
    for bad in ("exporter", "", 1, None):
        body = msgpack.unpackb(plain.pack())
        body["bind"] = bad
        with pytest.raises(PeerAuthError) as e:
            wb.Description.unpack(msgpack.packb(body), answer=True)
        assert e.value.code == "answer-malformed"
    offer = dataclasses.replace(browser, offer_nonce=None)
    assert wb.Description.unpack(offer.pack(), answer=False).bind == wb.BIND_FINGERPRINT
