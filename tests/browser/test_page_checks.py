"""The page's own checks, run in the real browser against bytes made by the daemon's code.

Signed envelopes (handoffd/envelope.py) and offers (handoffd/handoff/offer.py) are refused
in the page with the daemon's codes: another account, a forged or revoked or expired
certificate, a replay, another recipient, a bad signature; the page's msgpack codec agrees
byte for byte with handoffd/proto/codec.py and refuses what it refuses.
"""

from __future__ import annotations

import base64
import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Page

from handoffd import envelope
from handoffd import identity as idn
from handoffd.handoff.offer import sign_offer
from handoffd.proto import codec
from handoffd.proto import messages as m
from tests.browser.helpers import chromium, new_page
from tests.support.processes import ServerProcess
from tests.transport.helpers import Account, Device

pytestmark = pytest.mark.timeout(600)  # a real browser, daemons and a server on a shared machine

OPEN = """async ([caPem, crl, data, purpose, me, now]) => {
  const b = await import("/app/bytes.js");
  const pki = await import("/app/pki.js");
  const env = await import("/app/envelope.js");
  const trust = await pki.anchor(caPem, crl ? b.fromB64url(crl) : null);
  window.replay ??= new env.ReplayCache();
  try {
    const o = await env.open(b.fromB64url(data), {purpose, me, trust, replay: window.replay, now});
    return "ok:" + o.sender.deviceId;
  } catch (e) { return "refused:" + e.code; }
}"""

OFFER = """async ([caPem, data, me, peer]) => {
  const b = await import("/app/bytes.js");
  const pki = await import("/app/pki.js");
  const t = await import("/app/transfer.js");
  const trust = await pki.anchor(caPem, null);
  try {
    const man = await t.openOffer(b.fromB64url(data), trust, me, peer);
    return "ok:" + man.title + ":" + JSON.stringify(man.context);
  } catch (e) { return "refused:" + e.code; }
}"""

CODEC = """async ([data]) => {
  const b = await import("/app/bytes.js");
  const t = await import("/app/transfer.js");
  try {
    const msg = t.decodeMessage(b.fromB64url(data));
    return "ok:" + b.b64url(t.encodeMessage(msg.t, msg));
  } catch (e) { return "refused:" + e.code; }
}"""


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@pytest.fixture(scope="module")
def page(server: ServerProcess) -> Iterator[Page]:
    with chromium() as browser:
        context, tab = new_page(browser)
        tab.goto(f"{server.url}/app/")
        tab.wait_for_selector("body[data-state=unpaired]")
        yield tab
        context.close()


def _pem(account: Account) -> str:
    return idn.cert_to_pem(account.ca.cert).decode()


def _seal(
    sender: Device, to: str, *, now: float | None = None, purpose: str = "webrtc-offer"
) -> bytes:
    return envelope.seal(
        sender.key,
        idn.cert_to_der(sender.cert),
        purpose=purpose,
        recipient=to,
        payload=b"payload",
        now=now if now is not None else time.time(),
    )


def _open(page: Page, account: Account, data: bytes, me: str, **kw: Any) -> str:
    crl = kw.get("crl")
    args = [_pem(account), b64(crl) if crl else None, b64(data), kw.get("purpose", "webrtc-offer"),
            me, int(kw.get("now", time.time()) * 1000)]  # fmt: skip
    return str(page.evaluate(OPEN, args))


def test_envelopes_are_refused_like_the_daemon_refuses_them(page: Page) -> None:
    account, other = Account(), Account()
    alice, me, carol = account.device(), account.device(), account.device()
    good = _seal(alice, me.id)
    assert _open(page, account, good, me.id) == f"ok:{alice.id}"
    assert _open(page, account, good, me.id) == "refused:envelope-replayed"
    assert _open(page, account, _seal(alice, carol.id), me.id) == "refused:envelope-wrong-recipient"
    assert _open(page, account, _seal(other.device(), me.id), me.id) == "refused:cert-wrong-account"
    assert _open(page, account, _seal(alice, me.id, purpose="x"), me.id) == (
        "refused:envelope-wrong-context"
    )
    # A CA with the same account id and name but another key: the chain does not verify.
    forger = Account()
    forger.ca = idn.create_account_ca(account.ca.account_id, now=dt.datetime.now(dt.UTC))
    assert _open(page, account, _seal(forger.device(), me.id), me.id) == (
        "refused:cert-signature-invalid"
    )
    old = account.device(
        issued=dt.datetime.now(dt.UTC) - dt.timedelta(days=40), lifetime=dt.timedelta(days=30)
    )
    assert _open(page, account, _seal(old, me.id), me.id) == "refused:cert-expired"
    stale = _seal(alice, me.id, now=time.time() - 120)
    assert _open(page, account, stale, me.id) == "refused:envelope-expired"
    crl = account.trust_revoking(alice).crl
    assert crl is not None
    revoked = _seal(alice, me.id)
    assert _open(page, account, revoked, me.id, crl=idn.crl_to_der(crl)) == "refused:cert-revoked"
    sealed = bytearray(_seal(carol, me.id))
    sealed[-3] ^= 1  # inside the signature
    assert _open(page, account, bytes(sealed), me.id) == "refused:envelope-bad-signature"


def _offer(sender: Device, recipient: str, **changes: Any) -> bytes:
    fields: dict[str, Any] = {
        "handoff_id": "0" * 32, "session_id": "s1", "app_id": "org.example.notes",
        "title": "Plan", "context": b'{"k":1}', "sender": sender.id, "recipient": recipient,
        "created_ms": 1, "items": (m.ItemEntry(index=0, type="message", name="a.txt",
                                               mime="text/plain", size=1, sha256=b"\0" * 32),),
    }  # fmt: skip
    fields.update(changes)
    offer = sign_offer(sender.key, idn.cert_to_der(sender.cert), m.Manifest(**fields))
    return codec.encode(offer)


def test_offers_are_checked_like_the_daemon_checks_them(page: Page) -> None:
    account, other = Account(), Account()
    alice, me = account.device(), account.device()
    pem = _pem(account)

    def check(data: bytes, peer: str = alice.id) -> str:
        return str(page.evaluate(OFFER, [pem, b64(data), me.id, peer]))

    assert check(_offer(alice, me.id)) == 'ok:Plan:{"k":1}'
    assert check(_offer(alice, "X" * 32)) == "refused:offer-wrong-device"
    assert check(_offer(alice, me.id), peer=me.id) == "refused:offer-invalid"  # not whom we talk to
    foreign = other.device()
    assert check(_offer(foreign, me.id), peer=foreign.id) == "refused:offer-invalid"
    assert check(_offer(alice, me.id, context=b"[1]")) == "refused:manifest-bad-context"
    assert check(_offer(alice, me.id, handoff_id="nope")) == "refused:bad-handoff-id"
    tampered = bytearray(_offer(alice, me.id))
    tampered[tampered.index(b"Plan")] ^= 0x20  # the signed manifest changed
    assert check(bytes(tampered)) == "refused:offer-invalid"


def test_the_page_codec_agrees_with_the_daemons(page: Page) -> None:
    def roundtrip(data: bytes) -> str:
        return str(page.evaluate(CODEC, [b64(data)]))

    samples: list[m.Message] = [
        m.Hello(version=1, device_id="D" * 32, crl_number=7, crl=None, features=("a",)),
        m.Data(handoff_id="h", index=3, offset=2**40, data=b"\xff" * 61440),
        m.Ack(handoff_id="h", index=0, offset=65536),
        m.Ping(nonce=2**64 - 1),
        m.Cancel(handoff_id="h", reason="user"),
    ]
    for msg in samples:
        data = codec.encode(msg)
        assert roundtrip(data) == "ok:" + b64(data)  # decoded and re-encoded to the same bytes
    ping = codec.encode(m.Ping(nonce=5))
    assert roundtrip(ping[:-1]) == "refused:decode-malformed"
    assert roundtrip(ping + b"\x00") == "refused:decode-trailing-bytes"
    assert ping == b"\x82\xa5nonce\x05\xa1t\xa4ping"
    assert roundtrip(b"\x82\xa1t\xa4ping\xa5nonce\x05") == "refused:decode-non-canonical"  # order
    assert roundtrip(b"\x82\xa5nonce\xcc\x05\xa1t\xa4ping") == "refused:decode-non-canonical"
    assert roundtrip(b"\x82\xa1t\xa4ping\xa1t\xa4ping") == "refused:decode-duplicate-key"
    assert roundtrip(b"\x81\xa1t\xd4\x01\x00") == "refused:decode-ext-type"
    assert roundtrip(b"\x81\xa1t\xa4nope") == "refused:decode-unknown-type"
    assert roundtrip(b"\x91" * 20 + b"\x00") == "refused:decode-too-deep"
