"""Fuzz LAN signaling: frames, error bodies, forwarded signals, signed envelopes, offer payloads.

Run: .venv/bin/python -m bench.fuzz_signaling [--cases 100000] [--seed 1]

Structure-aware: valid frames, error bodies and offers (a signed envelope
around a real offer payload with an SDP) are mutated at the byte level, and
envelope bodies are also changed field by field and re-signed with the
sender's real key (so the checks after the signature are reached). Every
``--tls-every``-th case goes to a real ``SignalingServer`` over TLS on loopback,
whose ``on_offer`` does what the daemon's does first (open the envelope, decode
the payload, check the SDP). Properties: each decoder raises only the
project's errors (``HandoffError``) with a kebab-case code; an accepted error
body has a valid code and a printable message; the server answers every
connection with a well-formed frame (or closes) and keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import re
import ssl
import time
from collections.abc import Callable
from typing import Any

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.fuzz_common import INTERESTING_STRINGS, Report, main, mutate, random_bytes
from handoffd import envelope as env
from handoffd import identity as idn
from handoffd.errors import HandoffError
from handoffd.peering import REF_LEN, SignalFrame
from handoffd.transport import signaling
from handoffd.transport import webrtc as rtc

CODE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
FP = ":".join(["AB"] * 32)
SDP = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n"
    f"a=fingerprint:sha-256 {FP}\r\na=setup:actpass\r\n"
)


class World:
    """One account with two devices; the callee's trust anchor and replay cache."""

    def __init__(self) -> None:
        now = dt.datetime.now(dt.UTC)
        ca = idn.create_account_ca(idn.new_account_id(), now=now)
        self.key = Ed25519PrivateKey.generate()
        self.der = idn.cert_to_der(idn.issue_device_cert(ca, idn.make_csr(self.key), now=now))
        callee = Ed25519PrivateKey.generate()
        self.callee = idn.device_id_for(callee.public_key())
        self.trust = idn.TrustAnchor.from_ca(ca.cert)
        self.replay = env.ReplayCache()
        self.payload = rtc.Description(
            cid=b"c" * 16, sdp=SDP, fingerprints=[("sha-256", FP)]
        ).pack()

    def seal(self, payload: bytes | None = None, **kw: Any) -> bytes:
        """A valid offer envelope (``kw`` overrides seal's arguments)."""
        args: dict[str, Any] = {
            "purpose": rtc.PURPOSE_OFFER,
            "recipient": self.callee,
            "payload": self.payload if payload is None else payload,
            "now": time.time(),
        }
        args.update(kw)
        return env.seal(self.key, self.der, **args)

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
        sig = idn.sign(self.key, "envelope", body)
        return msgpack.packb({"body": body, "cert": self.der, "sig": sig}, use_bin_type=True)

    def open_offer(self, data: bytes) -> None:
        """What the callee does with an offer before any WebRTC work."""
        opened = env.open_envelope(
            data,
            purpose=rtc.PURPOSE_OFFER,
            recipient=self.callee,
            trust=self.trust,
            now=time.time(),
            replay=self.replay,
        )
        offer = rtc.Description.unpack(opened.payload, answer=False)
        rtc.check_sdp(offer.sdp, offer.fingerprints)


def _expect_handoff_error(
    report: Report, what: str, fn: Callable[[bytes], Any], sample: bytes
) -> Any:
    """``fn(sample)``: its result, or None after a HandoffError; anything else is a finding."""
    try:
        result = fn(sample)
    except HandoffError as exc:
        if not CODE.fullmatch(exc.code):
            report.finding(f"{what}-bad-code", f"{exc.code!r} for {sample[:120]!r}")
        report.count(f"{what}:{exc.code}")
        return None
    except Exception as exc:
        report.finding(f"{what}-raised-{type(exc).__name__}", f"{sample[:120]!r}: {exc!r}")
        return None
    report.count(f"{what}:ok")
    return result


async def _read_frame(data: bytes) -> tuple[int, bytes]:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return await signaling.read_frame(reader)


def check_frame(data: bytes, loop: asyncio.AbstractEventLoop, report: Report) -> None:
    """The stream frame reader: a (kind, body) or FrameError; EOF inside is IncompleteReadError."""
    try:
        loop.run_until_complete(_read_frame(data))
        report.count("frame:ok")
    except asyncio.IncompleteReadError:
        report.count("frame:eof")
    except HandoffError as exc:
        report.count(f"frame:{exc.code}")
    except Exception as exc:
        report.finding(f"read_frame-raised-{type(exc).__name__}", f"{data[:120]!r}: {exc!r}")


def check_error_body(body: bytes, report: Report) -> None:
    """decode_error: a valid (code, message) or FrameError."""
    got = _expect_handoff_error(report, "error-body", signaling.decode_error, body)
    if got is not None:
        code, message = got
        if not CODE.fullmatch(code) or len(code) > 64 or not message.isprintable():
            report.finding("error-body-accepted-bad-fields", repr(body[:120]))


class TlsTarget:
    """A real SignalingServer on loopback, and a client that sends raw bytes over TLS."""

    def __init__(self, world: World, loop: asyncio.AbstractEventLoop) -> None:
        self.world = world
        self.loop = loop
        self.server = signaling.SignalingServer(
            "127.0.0.1", 0, self.on_offer, read_timeout=0.3, answer_timeout=5.0
        )
        loop.run_until_complete(self.server.start())
        self.client_tls = signaling.client_context()

    async def on_offer(self, offer: bytes) -> bytes:
        self.world.open_offer(offer)
        return b"answer"

    async def exchange(self, data: bytes) -> bytes:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.server.port, ssl=self.client_tls), 10
        )
        try:
            writer.write(data)
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(writer.drain(), 10)
            if writer.can_write_eof():
                writer.write_eof()
            return await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 10)

    def check(self, data: bytes, report: Report) -> None:
        """One connection: the reply is one well-formed frame (or nothing), the server lives on."""
        try:
            reply = self.loop.run_until_complete(self.exchange(data))
        except (ConnectionError, ssl.SSLError) as exc:
            report.count(f"tls:{type(exc).__name__}")
            return
        except Exception as exc:
            report.finding(f"tls-client-{type(exc).__name__}", f"{data[:120]!r}: {exc!r}")
            return
        if not reply:
            report.count("tls:closed")
            return
        try:
            kind, body = self.loop.run_until_complete(_read_frame(reply))
            if kind == signaling.KIND_ERROR:
                code, _ = signaling.decode_error(body)
                report.count(f"tls:error:{code}")
            elif kind == signaling.KIND_ANSWER:
                report.count("tls:answer")
            else:
                report.finding("tls-reply-unexpected-kind", repr(reply[:120]))
        except (HandoffError, asyncio.IncompleteReadError) as exc:
            report.finding("tls-reply-malformed", f"{reply[:120]!r}: {exc!r}")
        if len(reply) != 4 + int.from_bytes(reply[:4], "big"):
            report.finding("tls-reply-has-extra-bytes", repr(reply[:120]))

    def close(self) -> None:
        self.loop.run_until_complete(self.server.close())


def run(cases: int, seed: int, tls_every: int = 200) -> Report:
    """``cases`` cases over the decoders; every ``tls_every``-th through a real server."""
    rng = random.Random(seed)
    report = Report("fuzz_signaling")
    world = World()
    loop = asyncio.new_event_loop()
    tls = TlsTarget(world, loop)
    error_body = signaling.encode_error("cert-revoked", "this device is revoked")[5:]
    started = time.monotonic()
    try:
        for i in range(cases):
            kind = i % 6
            if tls_every and i % tls_every == tls_every - 1:
                pick = rng.random()
                offer = world.seal() if pick < 0.4 else world.resealed_body(rng)
                frame = signaling.encode_frame(signaling.KIND_OFFER, offer)
                tls.check(mutate(frame, rng) if pick > 0.2 else frame, report)
            elif kind == 0:
                offer = signaling.encode_frame(rng.choice((1, 2, 3)), world.seal())
                check_frame(mutate(offer, rng) if rng.random() < 0.8 else offer, loop, report)
            elif kind == 1:
                body = mutate(error_body, rng) if rng.random() < 0.9 else random_bytes(rng)
                check_error_body(body, report)
            elif kind == 2:
                frame = SignalFrame(ref=rng.randbytes(REF_LEN), kind=1, body=world.seal()).encode()
                bad = mutate(frame, rng)
                _expect_handoff_error(report, "signal-frame", SignalFrame.decode, bad)
            elif kind == 3:
                data = mutate(world.seal(), rng)
                _expect_handoff_error(report, "envelope", world.open_offer, data)
            elif kind == 4:
                data = world.resealed_body(rng)
                _expect_handoff_error(report, "envelope", world.open_offer, data)
            else:
                data = world.seal(payload=mutate(world.payload, rng))
                _expect_handoff_error(report, "offer", world.open_offer, data)
            report.cases += 1
        # The server still answers a good offer after all that.
        tls.check(signaling.encode_frame(signaling.KIND_OFFER, world.seal()), report)
        if report.counts.get("tls:answer", 0) == 0:
            report.finding("tls-never-answered", "no valid offer was answered")
    finally:
        tls.close()
        loop.close()
    report.seconds = time.monotonic() - started
    return report


if __name__ == "__main__":
    main("fuzz_signaling", run)
