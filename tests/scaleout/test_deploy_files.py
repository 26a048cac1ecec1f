"""The deployment files users copy: the systemd template unit verifies; nginx.conf is tested live.

(deploy/nginx.conf is the configuration the cluster tests run nginx with: tests/services.py.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from handoffd import service

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "handoff-server@.service"


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing: install Debian's systemd"
    return subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
        check=False,
    )


def test_template_unit_instances_verify(tmp_path: Path) -> None:
    text = TEMPLATE.read_text().replace(
        "/usr/local/bin/handoff-server", service.program("handoff-server")
    )
    assert "--listen 127.0.0.1:%i --insecure-http" in text
    unit = tmp_path / "handoff-server@8001.service"
    unit.write_text(text)
    done = _verify(unit)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == ""
    # A broken copy is noticed, so the check above could fail.
    unit.write_text(text.replace("Restart=always", "Restart=sometimes"))
    assert "restart specifier" in _verify(unit).stderr
