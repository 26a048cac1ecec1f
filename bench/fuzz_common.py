"""Shared parts of the fuzz targets: byte mutations, findings, the command line.

Each ``bench/fuzz_*.py`` exposes ``run(cases, seed) -> Report`` (the short CI
run in ``tests/fuzz`` calls it with a few hundred cases) and a ``main`` for the
benchmark-style run: ``.venv/bin/python -m bench.fuzz_X --cases 100000``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

LONE_SURROGATE = re.compile(
    rb"\\ud[89ab][0-9a-f]{2}(?!\\ud[c-f])|(?<!\\ud[89ab][0-9a-f]{2})\\ud[c-f]"
)
"""In JSON text: the escape of a high surrogate without its low one, or of a low one alone."""

INTERESTING_INTS = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0xFFFF, 2**31 - 1, 2**32 - 1)
INTERESTING_STRINGS = (
    "",
    "\ud800",  # a lone surrogate: valid in JSON text, not encodable as UTF-8
    "\u202etxt.exe",  # bidi override
    "\u2028",
    "\x00",
    "../../etc/passwd",
    "a" * 300,
    "é" * 200,
    "%s%n",
    "🙂",
)


@dataclass
class Report:
    """What one run did: cases, seconds, and distinct findings (a key and one example each)."""

    target: str
    cases: int = 0
    seconds: float = 0.0
    findings: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def finding(self, key: str, example: str) -> None:
        """Record a finding once per key (the first example is kept)."""
        self.findings.setdefault(key, example[:500])

    def count(self, outcome: str) -> None:
        """Count one case's outcome (a status or an error code)."""
        self.counts[outcome] = self.counts.get(outcome, 0) + 1

    def summary(self) -> str:
        """A human summary for the benchmark notes."""
        top = sorted(self.counts.items(), key=lambda kv: -kv[1])[:12]
        lines = [
            (
                f"{self.target}: {self.cases} cases in {self.seconds:.1f} s "
                f"({self.cases / max(self.seconds, 1e-9):.0f}/s), {len(self.findings)} finding(s)"
            ),
            "  outcomes: " + ", ".join(f"{k}={v}" for k, v in top),
        ]
        lines += [f"  FINDING {k}: {v}" for k, v in sorted(self.findings.items())]
        return "\n".join(lines)


def mutate(data: bytes, rng: random.Random, rounds: int = 0) -> bytes:
    """A random small mutation of ``data`` (flip, insert, delete, splice, length fields)."""
    buf = bytearray(data)
    for _ in range(rounds or rng.choice((1, 1, 2, 3, 8))):
        op = rng.randrange(9)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 2:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        elif op == 3 and buf:
            del buf[pos : pos + rng.randrange(1, 17)]
        elif op == 4 and buf:
            end = rng.randrange(pos, len(buf) + 1)
            buf[pos:pos] = buf[pos:end]  # duplicate a chunk
        elif op == 5:
            v = rng.choice(INTERESTING_INTS)
            fmt = rng.choice(("!B", "!H", "!I"))
            buf[pos : pos + struct.calcsize(fmt)] = struct.pack(fmt, v & _mask(fmt))
        elif op == 6:
            del buf[pos:]  # truncate
        elif op == 7 and buf:
            buf[pos:pos] = b"\xff" * rng.randrange(1, 5)
        else:
            buf[pos:pos] = rng.choice(
                (b"\xc0", b"\xdc", b"\xc1", b"\xd9\xff", b"\x92\x93", b"\xde\xff\xff")
            )
    return bytes(buf)


def _mask(fmt: str) -> int:
    return (1 << (8 * struct.calcsize(fmt))) - 1


def random_bytes(rng: random.Random, limit: int = 64) -> bytes:
    """Raw random bytes of a random length up to ``limit``."""
    return rng.randbytes(rng.randrange(limit + 1))


def mutate_json(value: object, rng: random.Random, depth: int = 0) -> object:
    """A structure-aware mutation of a JSON value: change types, keys and strings."""
    if isinstance(value, dict) and value and depth < 8:
        out = dict(value)
        key = rng.choice(list(out))
        op = rng.randrange(6)
        if op == 0:
            del out[key]
        elif op == 1:
            out[key] = random_json(rng)
        elif op == 2:
            out[rng.choice((*INTERESTING_STRINGS, "type", "extra", "id"))] = random_json(rng)
        else:
            out[key] = mutate_json(out[key], rng, depth + 1)
        return out
    if isinstance(value, list) and value and depth < 8:
        out_l = list(value)
        i = rng.randrange(len(out_l))
        if rng.random() < 0.3:
            out_l.append(random_json(rng))
        else:
            out_l[i] = mutate_json(out_l[i], rng, depth + 1)
        return out_l
    if isinstance(value, str) and rng.random() < 0.7:
        s = rng.choice(INTERESTING_STRINGS)
        return rng.choice((s, value + s, s + value, value[: rng.randrange(len(value) + 1)]))
    return random_json(rng)


def random_json(rng: random.Random, depth: int = 0) -> object:
    """A random JSON value (small, with interesting strings and numbers)."""
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice((0, -1, 1, 2**31, 2**53 + 1, 2**64, -(2**63), 10**30))
    if kind == 3:
        return rng.choice((0.5, -0.0, 1e308, -1e-308, 3.14))
    if kind in (4, 5):
        return rng.choice(INTERESTING_STRINGS)
    if kind == 6:
        return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(12)))
    if kind == 7:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {
        rng.choice(INTERESTING_STRINGS): random_json(rng, depth + 1)
        for _ in range(rng.randrange(4))
    }


def dumps(value: object) -> bytes:
    """JSON as a client would send it (lone surrogates escaped, so still valid JSON text)."""
    return json.dumps(value, ensure_ascii=True).encode("ascii")


def main(name: str, run: Callable[[int, int], Report], default_cases: int = 100_000) -> None:
    """``--cases N --seed S``: run the target and print the report; exit 1 on findings."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}")
    parser.add_argument("--cases", type=int, default=default_cases)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    started = time.monotonic()
    report = run(args.cases, args.seed)
    report.seconds = report.seconds or time.monotonic() - started
    print(report.summary(), flush=True)
    sys.exit(1 if report.findings else 0)
