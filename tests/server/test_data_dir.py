"""The server's data directory: made 0700 by ``handoff-server serve``, refused if others can write it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.support.processes import ServerProcess


def test_serve_makes_the_data_directory_0700(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data).start()
    try:
        # With TLS the certificate's directory is made inside it: data/ must still be 0700.
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert any(data.iterdir())
    finally:
        server.stop()


def test_serve_refuses_a_data_directory_others_can_write(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    os.chmod(data, 0o777)  # noqa: S103 - the point of the test
    done = subprocess.run(
        [sys.executable, "-m", "handoffd.server.cli", "serve", "--data", str(data),
         "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "[data-dir-unsafe]" in done.stderr
    assert list(data.iterdir()) == []
