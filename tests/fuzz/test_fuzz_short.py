"""Short runs of the fuzz targets in bench/ (the long runs and their figures: docs/benchmarks.md).

``FUZZ_CASES`` scales every run (default 1: a few hundred cases each, well under
a minute in all); ``FUZZ_SEED`` changes the seed (default 1, so CI is repeatable).
"""

from __future__ import annotations

import os

import pytest

from bench import fuzz_control, fuzz_server, fuzz_signaling, fuzz_transfer

SCALE = float(os.environ.get("FUZZ_CASES", "1"))
SEED = int(os.environ.get("FUZZ_SEED", "1"))


def cases(n: int) -> int:
    return max(1, int(n * SCALE))


def test_transfer_protocol_fuzz() -> None:
    n = cases(3000)
    report = fuzz_transfer.run(n, SEED)
    assert report.cases == n
    assert report.findings == {}
    # The run reached every part: decodable mutants, the cores, and whole framed streams.
    assert any(k.startswith("decoded:") for k in report.counts)
    assert any(k.startswith("core:") for k in report.counts)
    assert report.counts.get("frames:ok", 0) > 0


def test_signaling_fuzz() -> None:
    n = cases(1000)
    report = fuzz_signaling.run(n, SEED, tls_every=50)
    assert report.cases == n
    assert report.findings == {}
    assert report.counts.get("frame:ok", 0) > 0
    assert report.counts.get("tls:answer", 0) > 0  # a valid offer got through the real server
    assert report.counts.get("tls:proof-verified", 0) > 0  # the server proved itself (v2)
    assert any(k.startswith("tls:hello:hello-") for k in report.counts)  # mutated hellos refused
    assert any(k.startswith("envelope:envelope-") for k in report.counts)  # re-signed mutants
    assert report.counts.get("hello:hello-malformed", 0) > 0
    assert report.counts.get("hello:hello-refused", 0) > 0  # a well-formed hello, a wrong MAC
    assert report.counts.get("proof:signaling-unauthenticated", 0) > 0


@pytest.mark.slow
def test_server_fuzz() -> None:
    n = cases(500)
    report = fuzz_server.run(n, SEED)
    assert report.cases == n
    assert report.findings == {}
    assert report.counts.get("api:200", 0) > 0  # signed requests got past authentication
    assert report.counts.get("ws:alive", 0) > 0  # the authenticated socket answered pings


@pytest.mark.slow
def test_control_api_fuzz() -> None:
    n = cases(400)
    report = fuzz_control.run(n, SEED)
    assert report.cases == n
    assert report.findings == {}
    assert report.counts.get("200", 0) > 0
    assert report.counts.get("201", 0) > 0  # sessions were published from generated bodies
