"""Shared pytest configuration: in CI (CI=true) a skipped test is a failure."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["tests.lab.fixtures"]

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Turn any skip into a failing exit status when running in CI."""
    if not IN_CI:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    skipped = reporter.stats.get("skipped", [])
    if skipped and exitstatus == 0:
        reporter.write_line(f"CI=true: {len(skipped)} test(s) skipped; skips are failures in CI")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
