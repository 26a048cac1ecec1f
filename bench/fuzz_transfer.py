"""Fuzz the transfer protocol: the message codec, the stream framing and both state machines.

Run: .venv/bin/python -m bench.fuzz_transfer [--cases 100000] [--seed 1]

Structure-aware: a real exchange between a SenderCore and a ReceiverCore is
recorded; each case replays a random prefix of a fresh exchange, then feeds one
side a mutated frame (a recorded message with one field changed and re-encoded,
a byte-level mutation of one, or raw bytes), and lets the exchange go on.
Properties: decoding raises only ProtocolError and what decodes re-encodes to
the same message; the cores never raise for peer input, never ask for a
non-contiguous write or acknowledge more than is durable (the test adapters'
checks), and an exchange that still ends delivered delivered the right bytes;
the frame decoder raises only ProtocolError and never yields an oversize frame.
"""

from __future__ import annotations

import dataclasses
import random
import time
import typing
from typing import Any

from bench.fuzz_common import INTERESTING_STRINGS, Report, main, mutate, random_bytes
from handoffd.errors import ProtocolError
from handoffd.proto import codec, framing
from handoffd.proto import messages as m
from handoffd.proto import transfer as t
from tests.transferkit import connect

FILES = [b"a" * 300, b"", bytes(range(256)) * 3]
WINDOW = m.MIN_WINDOW


def record() -> list[tuple[str, bytes]]:
    """The frames of one whole exchange (and the resumed notice), by receiving side."""
    p = connect(FILES, window=WINDOW)
    frames: list[tuple[str, bytes]] = []
    for side, core in (("s", p.sender), ("r", p.receiver)):
        orig = core.receive_bytes

        def rec(data: bytes, now: float, orig: Any = orig, side: str = side) -> None:
            frames.append((side, data))
            orig(data, now)

        setattr(core, "receive_bytes", rec)  # noqa: B010 - wrap the bound method of this instance
    if not p.run():
        raise RuntimeError("the reference exchange did not settle")
    p.receiver.resumed(1.0)
    p.run()
    if not p.sender.finished or p.disk.contents(len(FILES)) != FILES:
        raise RuntimeError("the reference exchange failed")
    return frames


def _field_value(value: Any, rng: random.Random) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return rng.choice((0, 1, -1, value + 1, value - 1, 2**31 - 1, 2**32, 2**63 - 1, 2**64))
    if isinstance(value, bytes):
        return mutate(value, rng) if rng.random() < 0.7 else rng.randbytes(rng.randrange(80))
    if isinstance(value, str):
        return rng.choice((*INTERESTING_STRINGS, value + "x", value[:-1]))
    if isinstance(value, tuple):
        return value[: rng.randrange(len(value) + 1)] if value else (rng.randrange(5),)
    if isinstance(value, dict):
        return {rng.randrange(-1, 5): rng.randrange(-1, 2**33)}
    return None


def field_mutation(data: bytes, rng: random.Random) -> bytes | None:
    """Decode a valid frame, change one field to an edge value, re-encode (None if refused)."""
    msg = m.decode(data, max_size=m.WIRE_MAX)
    fields = dataclasses.fields(typing.cast("Any", msg))
    if not fields:
        return None
    f = rng.choice(fields)
    try:
        changed = dataclasses.replace(
            typing.cast("Any", msg), **{f.name: _field_value(getattr(msg, f.name), rng)}
        )
        return codec.encode(changed)
    except (ProtocolError, TypeError, ValueError):
        return None


def check_codec(data: bytes, report: Report) -> None:
    """Decode: a message or ProtocolError; a decoded message round-trips."""
    try:
        msg = m.decode(data, max_size=m.WIRE_MAX)
    except ProtocolError as exc:
        report.count(f"decode:{exc.code}")
        return
    except Exception as exc:  # the finding: anything else escaped the decoder
        report.finding(f"decode-raised-{type(exc).__name__}", f"{data[:120]!r}: {exc!r}")
        return
    report.count(f"decoded:{codec.tag_of(msg)}")
    try:
        again = m.decode(codec.encode(msg), max_size=m.WIRE_MAX)
    except Exception as exc:
        report.finding("decoded-message-does-not-re-encode", f"{data[:120]!r}: {exc!r}")
        return
    if again != msg:
        report.finding("decode-encode-not-idempotent", repr(data[:120]))


def check_core(frames: list[tuple[str, bytes]], rng: random.Random, report: Report) -> None:
    """Replay a prefix of a fresh exchange, inject one hostile frame, let it run on."""
    p = connect(FILES, window=WINDOW)
    try:
        p.run(budget=rng.randrange(len(frames) + 1))
        side, data = rng.choice(frames)
        pick = rng.random()
        bad = (
            field_mutation(data, rng)
            if pick < 0.5
            else mutate(data, rng)
            if pick < 0.9
            else random_bytes(rng, 96)
        ) or mutate(data, rng)
        core: t.SenderCore | t.ReceiverCore = p.sender if side == "s" else p.receiver
        if rng.random() < 0.2:
            core = p.receiver if side == "s" else p.sender  # the wrong direction
        core.receive_bytes(bad, p.now)
        if rng.random() < 0.3:
            core.receive_bytes(bad, p.now)  # replayed
        p.now += rng.choice((0.0, 1.0, 100.0))
        for c in (p.sender, p.receiver):
            if (at := c.next_timer()) is not None and at <= p.now:
                c.timer(p.now)
        p.run(budget=2000)
    except AssertionError as exc:  # the adapters' safety checks (contiguous writes, durable acks)
        report.finding("core-broke-an-invariant", f"{bad[:120]!r}: {exc!r}")
        return
    except Exception as exc:
        report.finding(f"core-raised-{type(exc).__name__}", f"{bad[:120]!r}: {exc!r}")
        return
    if p.receiver.state == t.State.DELIVERED and p.disk.contents(len(FILES)) != FILES:
        report.finding("delivered-wrong-bytes", repr(bad[:120]))
    report.count(f"core:{p.sender.state}/{p.receiver.state}")


def check_framing(frames: list[tuple[str, bytes]], rng: random.Random, report: Report) -> None:
    """A stream of framed messages, mutated, fed in random pieces."""
    limit = rng.choice((64, 1024, framing.MAX_FRAME))
    stream = b"".join(
        framing.encode_frame(d, max_frame=framing.MAX_FRAME)
        for _, d in rng.sample(frames, min(4, len(frames)))
    )
    stream = mutate(stream, rng)
    dec = framing.FrameDecoder(limit)
    pos = 0
    try:
        while pos < len(stream):
            step = rng.randrange(1, 64)
            for frame in dec.feed(stream[pos : pos + step]):
                if len(frame) > limit:
                    report.finding("frame-over-limit", repr(stream[:120]))
            pos += step
        dec.eof()
        report.count("frames:ok")
    except ProtocolError as exc:
        report.count(f"frames:{exc.code}")
    except Exception as exc:
        report.finding(f"framing-raised-{type(exc).__name__}", f"{stream[:120]!r}: {exc!r}")


def run(cases: int, seed: int) -> Report:
    """``cases`` cases, split between the codec, the cores and the framing."""
    rng = random.Random(seed)
    report = Report("fuzz_transfer")
    frames = record()
    started = time.monotonic()
    for i in range(cases):
        kind = i % 4
        if kind == 0:
            data = rng.choice(frames)[1]
            check_codec(field_mutation(data, rng) or mutate(data, rng), report)
        elif kind == 1:
            check_codec(mutate(rng.choice(frames)[1], rng), report)
        elif kind == 2:
            check_core(frames, rng, report)
        else:
            check_framing(frames, rng, report)
        report.cases += 1
    report.seconds = time.monotonic() - started
    return report


if __name__ == "__main__":
    main("fuzz_transfer", run)
