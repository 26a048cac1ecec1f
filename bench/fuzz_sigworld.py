"""The signaling fuzzer's world: one account with a caller and a callee (the listener), and
the valid material the mutants start from (see ``bench.fuzz_signaling``)."""

from __future__ import annotations

import datetime as dt
import random
import time
from typing import Any

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.fuzz_common import INTERESTING_STRINGS, mutate
from handoffd import envelope as env
from handoffd import identity as idn
from handoffd.transport import sigauth, signaling
from handoffd.transport import webrtc as rtc
from handoffd.transport.base import LocalIdentity

FP = ":".join(["AB"] * 32)
SDP = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n"
    f"a=fingerprint:sha-256 {FP}\r\na=setup:actpass\r\n"
)
ODD_VALUES: tuple[Any, ...] = (None, -1, 0, 1, 3, 2**63, True, "2", b"", [2], {"v": 2})


class World:
    """One account with a caller and a callee (the listener); the callee's offer replay cache."""

    def __init__(self) -> None:
        now = dt.datetime.now(dt.UTC)
        self.ca = idn.create_account_ca(idn.new_account_id(), now=now)
        self.trust = idn.TrustAnchor.from_ca(self.ca.cert)
        self.caller = self.device(now)
        self.callee = self.device(now)
        self.replay = env.ReplayCache()
        self.payload = rtc.Description(
            cid=b"c" * 16, sdp=SDP, fingerprints=[("sha-256", FP)]
        ).pack()
        # A listener TLS certificate for the pure hello and proof targets.
        self.tls_der = signaling.server_tls()[1]

    def device(self, now: dt.datetime) -> LocalIdentity:
        """A device of the account, with its own replay cache."""
        key = Ed25519PrivateKey.generate()
        der = idn.cert_to_der(idn.issue_device_cert(self.ca, idn.make_csr(key), now=now))
        return LocalIdentity(key=key, cert_der=der, trust=self.trust)

    def seal(self, payload: bytes | None = None, **kw: Any) -> bytes:
        """A valid offer envelope from the caller to the callee (``kw`` overrides seal's arguments)."""
        args: dict[str, Any] = {
            "purpose": rtc.PURPOSE_OFFER,
            "recipient": self.callee.device_id,
            "payload": self.payload if payload is None else payload,
            "now": time.time(),
        }
        args.update(kw)
        return env.seal(self.caller.key, self.caller.cert_der, **args)

    def resealed_body(self, rng: random.Random) -> bytes:
        """An envelope whose body has one field changed, correctly signed by the sender."""
        fields: list[Any] = msgpack.unpackb(msgpack.unpackb(self.seal())["body"])
        i = rng.randrange(len(fields))
        fields[i] = rng.choice(
            (
                None,
                -1,
                0,
                2**63,
                rng.choice(INTERESTING_STRINGS),
                rng.randbytes(rng.choice((0, 15, 16, 17))),
                int(time.time() * 1000) + rng.choice((-120_000, 61_000, 10**12)),
                [fields[i]],
            )
        )
        if rng.random() < 0.3:
            fields.append(1)
        body = msgpack.packb(fields, use_bin_type=True, unicode_errors="surrogatepass")
        sig = idn.sign(self.caller.key, "envelope", body)
        return msgpack.packb(
            _outer_map(rng, {"body": body, "cert": self.caller.cert_der, "sig": sig}),
            use_bin_type=True,
        )

    def open_offer(self, data: bytes) -> None:
        """What the callee does with an offer before any WebRTC work."""
        opened = env.open_envelope(
            data,
            purpose=rtc.PURPOSE_OFFER,
            recipient=self.callee.device_id,
            trust=self.trust,
            now=time.time(),
            replay=self.replay,
        )
        offer = rtc.Description.unpack(opened.payload, answer=False)
        rtc.check_sdp(offer.sdp, offer.fingerprints)

    # ------------------------------------------------------------ v2: hello and proof

    def hello_mutant(self, rng: random.Random, tls_der: bytes) -> tuple[bytes, bytes]:
        """(a hello for ``tls_der`` changed at the byte or field level, the genuine nonce)."""
        body, nonce = sigauth.make_hello(self.trust, tls_der)
        if rng.random() < 0.5:
            return mutate(body, rng), nonce
        fields: dict[Any, Any] = msgpack.unpackb(body)
        op = rng.randrange(5)
        key = rng.choice(list(fields))
        if op == 0:
            del fields[key]
        elif op == 1:
            fields[key] = rng.choice((*ODD_VALUES, rng.randbytes(rng.choice((0, 31, 32, 33)))))
        elif op == 2:  # the same key as text and binary, or binary only
            fields[key.encode()] = fields[key]
            if rng.random() < 0.5:
                del fields[key]
        elif op == 3:
            fields[rng.choice(("extra", "V", b"v", "nonce\x00"))] = 1
        else:  # a genuine MAC for another nonce, or the genuine one for another certificate
            other, _ = sigauth.make_hello(
                self.trust, tls_der if rng.random() < 0.5 else self.tls_der
            )
            fields["mac" if rng.random() < 0.5 else "nonce"] = msgpack.unpackb(other)["mac"]
        return msgpack.packb(fields, use_bin_type=True), nonce

    def proof_mutant(self, rng: random.Random, nonce: bytes) -> tuple[bytes, bool]:
        """(a proof for ``nonce`` on ``self.tls_der``, mutated; whether it may still verify)."""
        now = time.time()
        if rng.random() < 0.5:
            # A byte mutant may still verify (msgpack re-encodes the same signed body).
            return mutate(sigauth.make_proof(self.callee, nonce, self.tls_der, now=now), rng), True
        payload: list[Any] = [sigauth.VERSION, nonce, sigauth.tls_fingerprint(self.tls_der)]
        args: dict[str, Any] = {
            "purpose": sigauth.PROOF_PURPOSE,
            "recipient": sigauth.ANY_CALLER,
            "now": now,
        }
        signer = self.callee
        op = rng.randrange(6)
        if op == 0:
            i = rng.randrange(3)
            payload[i] = rng.choice((*ODD_VALUES, rng.randbytes(32), nonce[::-1]))
        elif op == 1:
            payload.append(rng.choice(ODD_VALUES))
        elif op == 2:
            args["purpose"] = rng.choice((rtc.PURPOSE_OFFER, rtc.PURPOSE_ANSWER, "signaling-hello"))
        elif op == 3:
            args["recipient"] = rng.choice((self.caller.device_id, self.callee.device_id, ""))
        elif op == 4:
            signer = self.caller  # a device of the account, not the one the caller meant
        else:
            args["now"] = now + rng.choice((-120.0, -61.0, 61.0, 3600.0))
        packed = msgpack.packb(payload, use_bin_type=True)
        proof = env.seal(signer.key, signer.cert_der, payload=packed, **args)
        return proof, False


def _outer_map(rng: random.Random, fields: dict[str, bytes]) -> dict[Any, bytes]:
    """Sometimes give one key of an envelope map as binary instead of text (a fuzz finding)."""
    if rng.random() < 0.1:
        key = rng.choice(list(fields))
        out: dict[Any, bytes] = dict(fields)
        out[key.encode()] = out.pop(key)
        return out
    return dict(fields)
