"""Short runs of the fuzz targets in bench/ (the long runs and their figures: docs/benchmarks.md).

``FUZZ_CASES`` scales every run (default 1: a few hundred cases each, well under
a minute in all); ``FUZZ_SEED`` changes the seed (default 1, so CI is repeatable).
"""

from __future__ import annotations

import os

import pytest

from bench import fuzz_control, fuzz_server, fuzz_signaling, fuzz_transfer
from bench.fuzz_common import Report

SCALE = float(os.environ.get("FUZZ_CASES", "1"))
SEED = int(os.environ.get("FUZZ_SEED", "1"))

KNOWN: dict[str, str] = {
    # Reported, not fixed here (server web login, another helper's area): POST /login with a
    # non-ASCII "csrf" field reaches hmac.compare_digest(str, str) in
    # WebState.check_login_token, which raises TypeError -> 500 and a logged traceback.
    "web-500": "/login",
    "logged-error:handoffd.server: internal error path=/login TypeError('compa": "/login",
    # Audit finding 9 (the control API's string validation, another helper's area): a lone
    # UTF-16 surrogate in a title, text, context or launch argument passes validation and the
    # request then fails with 500. fuzz_control files such a 500 under this key only.
    "lone-surrogate-500": "-> 500",
    # Its lasting effect: POST /v1/apps with a lone surrogate in "launch" answers 500 but the
    # app is stored, and from then on (across restarts) GET /v1/apps answers 500.
    "GET /v1/apps-500-internal": "GET /v1/apps b''",
    # Reported (handoffd/envelope.py, the signaling helper's area): open_envelope sorts the
    # outer map's keys, so a map with both str and bytes keys raises TypeError instead of
    # EnvelopeError(envelope-malformed). The 10^5 run hits it; this seed's short run may not.
    "envelope-raised-TypeError": "not supported between instances of 'bytes' and 'str'",
}


def cases(n: int) -> int:
    return max(1, int(n * SCALE))


def unexpected(report: Report) -> dict[str, str]:
    """Findings other than the reported ones above (each still must name /login)."""
    return {k: v for k, v in report.findings.items() if not (k in KNOWN and KNOWN[k] in v)}


def test_transfer_protocol_fuzz() -> None:
    n = cases(3000)
    report = fuzz_transfer.run(n, SEED)
    assert report.cases == n
    assert unexpected(report) == {}
    # The run reached every part: decodable mutants, the cores, and whole framed streams.
    assert any(k.startswith("decoded:") for k in report.counts)
    assert any(k.startswith("core:") for k in report.counts)
    assert report.counts.get("frames:ok", 0) > 0


def test_signaling_fuzz() -> None:
    n = cases(1000)
    report = fuzz_signaling.run(n, SEED, tls_every=50)
    assert report.cases == n
    assert unexpected(report) == {}
    assert report.counts.get("frame:ok", 0) > 0
    assert report.counts.get("tls:answer", 0) > 0  # a valid offer got through the real server
    assert any(k.startswith("envelope:envelope-") for k in report.counts)  # re-signed mutants


@pytest.mark.slow
def test_server_fuzz() -> None:
    n = cases(500)
    report = fuzz_server.run(n, SEED)
    assert report.cases == n
    assert unexpected(report) == {}
    assert report.counts.get("api:200", 0) > 0  # signed requests got past authentication
    assert report.counts.get("ws:alive", 0) > 0  # the authenticated socket answered pings


@pytest.mark.slow
def test_control_api_fuzz() -> None:
    n = cases(400)
    report = fuzz_control.run(n, SEED)
    assert report.cases == n
    assert unexpected(report) == {}
    assert report.counts.get("200", 0) > 0
    assert report.counts.get("201", 0) > 0  # sessions were published from generated bodies
