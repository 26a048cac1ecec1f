"""Fuzz LAN signaling v2: frames, hellos, proofs, error bodies, forwarded signals, envelopes, offers.

Run: .venv/bin/python -m bench.fuzz_signaling [--cases 100000] [--seed 1]

Structure-aware: valid frames (all five kinds), hellos, proofs, error bodies
and offers (a signed envelope around a real offer payload with an SDP) are
mutated at the byte level; hellos are also rebuilt field by field (wrong
types, extra or missing keys, text and binary keys mixed), and envelope and
proof bodies are changed field by field and re-signed with the sender's real
key (so the checks after the signature are reached). Every
``--tls-every``-th case goes to a real ``SignalingServer`` over TLS on
loopback that speaks v2 as the daemon's does: either a valid hello, the
listener's proof checked as a caller checks it, then a (mutated) offer, whose
``on_offer`` does what the daemon's does first (open the envelope, decode the
payload, check the SDP); or a mutated hello.

Properties: each decoder raises only the project's errors (``HandoffError``)
with a kebab-case code; a proof is only ever refused as
``signaling-unauthenticated``; no hello or proof that is not the genuine one is
accepted; an accepted error body has a valid code and a printable message;
the server answers a hello exactly as ``check_hello`` judges it (the error's
code, or a proof that verifies for that hello's nonce), answers every offer
with one well-formed frame, and keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import ssl
import time
from collections.abc import Callable
from typing import Any

from bench.fuzz_common import Report, main, mutate, random_bytes
from bench.fuzz_sigworld import World
from handoffd.errors import HandoffError
from handoffd.peering import REF_LEN, SignalFrame
from handoffd.transport import sigauth, signaling

CODE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


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


def check_hello(world: World, rng: random.Random, report: Report) -> None:
    """check_hello: a hello-* SignalingAuthError, or the genuine nonce (nothing forged passes)."""
    body, nonce = world.hello_mutant(rng, world.tls_der)
    got = _expect_handoff_error(
        report, "hello", lambda b: sigauth.check_hello(b, world.trust, world.tls_der), body
    )
    if got is not None and got != nonce:
        report.finding("hello-accepted-forged", repr(body[:120]))


def check_proof(world: World, rng: random.Random, report: Report) -> None:
    """check_proof: only signaling-unauthenticated; a changed proof never verifies."""
    nonce = rng.randbytes(sigauth.NONCE_LEN)
    proof, may_verify = world.proof_mutant(rng, nonce)

    def verify(data: bytes) -> bool:
        sigauth.check_proof(
            data,
            local=world.caller,
            expected_device=world.callee.device_id,
            nonce=nonce,
            tls_cert_der=world.tls_der,
            now=time.time(),
        )
        return True

    try:
        verify(proof)
    except sigauth.SignalingAuthError as exc:
        report.count(f"proof:{exc.code}")
        if exc.code != "signaling-unauthenticated":
            report.finding("proof-refused-with-another-code", f"{exc.code}: {proof[:120]!r}")
        return
    except Exception as exc:
        report.finding(f"proof-raised-{type(exc).__name__}", f"{proof[:120]!r}: {exc!r}")
        return
    report.count("proof:ok")
    if not may_verify:  # a re-signed change must never pass
        report.finding("proof-accepted-changed", repr(proof[:120]))


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split a reply into frames; ValueError if it is not a whole number of valid frames."""
    out = []
    while data:
        if len(data) < 5:
            raise ValueError("a partial frame")
        length = int.from_bytes(data[:4], "big")
        if not 1 <= length <= signaling.MAX_FRAME or len(data) < 4 + length:
            raise ValueError("a bad or partial frame")
        out.append((data[4], data[5 : 4 + length]))
        data = data[4 + length :]
    return out


class TlsTarget:
    """A real v2 SignalingServer on loopback, and a client that speaks v2 or sends raw bytes."""

    def __init__(self, world: World, loop: asyncio.AbstractEventLoop) -> None:
        self.world = world
        self.loop = loop
        self.server = signaling.SignalingServer(
            "127.0.0.1",
            0,
            self.on_offer,
            local=lambda: world.callee,
            # Short: TLS has no half-close, so a frame cut short waits for this timeout.
            read_timeout=0.5,
            answer_timeout=5.0,
        )
        loop.run_until_complete(self.server.start())
        self.client_tls = signaling.client_context()
        self.tls_der = loop.run_until_complete(self._certificate())

    async def on_offer(self, offer: bytes) -> bytes:
        self.world.open_offer(offer)
        return b"answer"

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1", self.server.port, ssl=self.client_tls, server_hostname=""
            ),
            10,
        )

    async def _certificate(self) -> bytes:
        """The listener's (ephemeral) TLS certificate: hellos are bound to it."""
        _, writer = await self._connect()
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            if not der:
                raise RuntimeError("no TLS certificate from the signaling server")
            return bytes(der)
        finally:
            await self._close(writer)

    @staticmethod
    async def _close(writer: asyncio.StreamWriter) -> None:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 10)

    async def _send_rest(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
    ) -> bytes:
        writer.write(data)
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(writer.drain(), 10)
        if writer.can_write_eof():
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), 10)

    async def raw(self, data: bytes) -> bytes:
        """Send ``data`` as the first bytes of a connection; everything the server answered."""
        reader, writer = await self._connect()
        try:
            return await self._send_rest(reader, writer, data)
        finally:
            await self._close(writer)

    async def flow(self, offer_frame: bytes) -> tuple[str, bytes]:
        """A caller's v2 exchange up to the offer: ("ok", reply), or (what failed, detail)."""
        world = self.world
        reader, writer = await self._connect()
        try:
            hello, nonce = sigauth.make_hello(world.caller.current_trust(), self.tls_der)
            writer.write(signaling.encode_frame(signaling.KIND_HELLO, hello))
            await asyncio.wait_for(writer.drain(), 10)
            kind, body = await asyncio.wait_for(signaling.read_frame(reader), 10)
            if kind != signaling.KIND_PROOF:
                return "no-proof", bytes([kind]) + body[:100]
            try:
                sigauth.check_proof(
                    body,
                    local=world.caller,
                    expected_device=world.callee.device_id,
                    nonce=nonce,
                    tls_cert_der=self.tls_der,
                    now=time.time(),
                )
            except HandoffError as exc:
                return "proof-refused", exc.message.encode()
            return "ok", await self._send_rest(reader, writer, offer_frame)
        finally:
            await self._close(writer)

    def _run(self, report: Report, coro: Any, sample: bytes) -> Any:
        try:
            return self.loop.run_until_complete(coro)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            report.count(f"tls:{type(exc).__name__}")
        except Exception as exc:
            report.finding(f"tls-client-{type(exc).__name__}", f"{sample[:120]!r}: {exc!r}")
        return None

    def check_offer(self, offer_frame: bytes, report: Report, *, valid: bool) -> None:
        """Hello, proof (checked), then the offer: one answer or error frame; valid ones answered."""
        got = self._run(report, self.flow(offer_frame), offer_frame)
        if got is None:
            return
        what, reply = got
        if what != "ok":
            report.finding(f"tls-{what}", repr(reply[:200]))
            return
        report.count("tls:proof-verified")
        try:
            frames = _frames(reply)
        except ValueError:
            report.finding("tls-reply-malformed", repr(reply[:120]))
            return
        if not frames:
            report.count("tls:closed")
            if valid:
                report.finding("tls-valid-offer-unanswered", "the server closed")
            return
        if len(frames) > 1:
            report.finding("tls-reply-has-extra-frames", repr(reply[:120]))
        kind, body = frames[0]
        if kind == signaling.KIND_ANSWER:
            report.count("tls:answer")
        elif kind == signaling.KIND_ERROR:
            try:
                code, _ = signaling.decode_error(body)
            except HandoffError:
                report.finding("tls-error-body-malformed", repr(reply[:120]))
                return
            report.count(f"tls:error:{code}")
            if valid and code != "timeout":  # timeout: this client was slower than 0.5 s
                report.finding("tls-valid-offer-refused", code)
        else:
            report.finding("tls-reply-unexpected-kind", repr(reply[:120]))

    def check_hello(self, rng: random.Random, report: Report) -> None:
        """A mutated hello: the server answers as check_hello judges it (body-level mutants)."""
        if rng.random() < 0.15:
            body = sigauth.make_hello(self.world.trust, self.tls_der)[0]
        else:
            body, _ = self.world.hello_mutant(rng, self.tls_der)
        framed = rng.random() < 0.8
        data = signaling.encode_frame(signaling.KIND_HELLO, body)
        if not framed:
            data = mutate(data, rng)
        reply = self._run(report, self.raw(data), data)
        if reply is None:
            return
        try:
            frames = _frames(reply)
        except ValueError:
            report.finding("tls-hello-reply-malformed", repr(reply[:120]))
            return
        if not frames:
            report.count("tls:hello:closed")
            if framed:
                report.finding("tls-hello-unanswered", repr(body[:120]))
            return
        kind, reply_body = frames[0]
        if not framed:  # the framing itself was mutated: only well-formed replies are checked
            report.count(f"tls:hello-raw:{kind}")
            return
        try:
            nonce: bytes | None = sigauth.check_hello(body, self.world.trust, self.tls_der)
            expected = "proof"
        except HandoffError as exc:
            nonce, expected = None, exc.code
        if kind == signaling.KIND_PROOF and nonce is not None:
            try:
                sigauth.check_proof(
                    reply_body,
                    local=self.world.caller,
                    expected_device=self.world.callee.device_id,
                    nonce=nonce,
                    tls_cert_der=self.tls_der,
                    now=time.time(),
                )
            except HandoffError as exc:
                report.finding("tls-hello-proof-invalid", exc.message)
                return
            report.count("tls:hello:proof")
        elif kind == signaling.KIND_ERROR:
            try:
                code, _ = signaling.decode_error(reply_body)
            except HandoffError:
                report.finding("tls-error-body-malformed", repr(reply[:120]))
                return
            report.count(f"tls:hello:{code}")
            if code != expected:
                report.finding("tls-hello-judged-otherwise", f"{code} != {expected}: {body!r}")
        else:
            report.finding("tls-hello-judged-otherwise", f"kind {kind} != {expected}: {body!r}")
        # After a proof the server waits for an offer: at most an error (timeout) follows.
        if len(frames) > 2 or (len(frames) == 2 and frames[1][0] != signaling.KIND_ERROR):
            report.finding("tls-hello-reply-has-extra-frames", repr(reply[:120]))
        if len(frames) == 2 and kind != signaling.KIND_PROOF:
            report.finding("tls-hello-reply-has-extra-frames", repr(reply[:120]))

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
    hello = sigauth.make_hello(world.trust, world.tls_der)[0]
    proof = sigauth.make_proof(world.callee, bytes(32), world.tls_der, now=time.time())
    started = time.monotonic()
    try:
        for i in range(cases):
            kind = i % 8
            if tls_every and i % tls_every == tls_every - 1:
                pick = rng.random()
                if pick < 0.35:
                    tls.check_hello(rng, report)
                else:
                    valid = pick < 0.5
                    offer = world.seal() if pick < 0.7 else world.resealed_body(rng)
                    frame = signaling.encode_frame(signaling.KIND_OFFER, offer)
                    tls.check_offer(frame if valid else mutate(frame, rng), report, valid=valid)
            elif kind == 0:
                body = rng.choice((world.seal(), hello, proof, error_body, b"x"))
                frame = signaling.encode_frame(rng.choice((1, 2, 3, 4, 5)), body)
                check_frame(mutate(frame, rng) if rng.random() < 0.8 else frame, loop, report)
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
            elif kind == 5:
                data = world.seal(payload=mutate(world.payload, rng))
                _expect_handoff_error(report, "offer", world.open_offer, data)
            elif kind == 6:
                check_hello(world, rng, report)
            else:
                check_proof(world, rng, report)
            report.cases += 1
        # The server still answers a good offer after all that.
        tls.check_offer(
            signaling.encode_frame(signaling.KIND_OFFER, world.seal()), report, valid=True
        )
        if report.counts.get("tls:answer", 0) == 0:
            report.finding("tls-never-answered", "no valid offer was answered")
    finally:
        tls.close()
        loop.close()
    report.seconds = time.monotonic() - started
    return report


if __name__ == "__main__":
    main("fuzz_signaling", run)
