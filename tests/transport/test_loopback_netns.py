"""Loopback-only host (a fresh network namespace with only ``lo`` up): peers still connect."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _namespace_prefix() -> list[str]:
    """A throwaway network namespace: removed by the kernel when the child exits."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.fail("unshare (util-linux) is needed")
    if os.geteuid() == 0:
        return [unshare, "--net"]
    probe = subprocess.run(
        [unshare, "--user", "--map-root-user", "--net", "true"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip("needs root or unprivileged user namespaces (the lab's rule)")
    return [unshare, "--user", "--map-root-user", "--net"]


@pytest.mark.lab
@pytest.mark.timeout(120)
def test_loopback_only_namespace_connects() -> None:
    ip = shutil.which("ip") or "/usr/sbin/ip"
    cmd = [
        *_namespace_prefix(),
        "sh",
        "-c",
        f'"{ip}" link set lo up && exec "{sys.executable}" -m tests.transport.netns_child',
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=100, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # Only loopback exists, so the only host candidate is the one we add.
    assert result["hosts"] == ["127.0.0.1"]
    assert result["default"] is True
    # Without the added candidate nothing connects (what aioice alone would do).
    assert result["no_loopback"] == "connect-timeout"
