"""Smoke test of bench/bench_scaleout.py: a tiny run so the bench keeps working."""

from __future__ import annotations

from bench import bench_scaleout


def test_bench_scaleout_smoke() -> None:
    figures = bench_scaleout.run_sync(devices=20, per_account=10, rounds=20, sources=2, parallel=10)
    assert figures["devices"] == 20
    assert figures["connect_s"] > 0
    assert 0 < figures["idle_p50"] <= figures["idle_p99"]
    assert 0 < figures["loaded_p50"] <= figures["loaded_p99"]
