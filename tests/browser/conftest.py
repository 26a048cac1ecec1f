"""The browser-device tests reuse the daemon tests' fixtures (short homes, real daemons, a real server)."""

from tests.daemon.conftest import daemons, server, short_dir

__all__ = ["daemons", "server", "short_dir"]
