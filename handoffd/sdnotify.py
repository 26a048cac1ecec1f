"""sd_notify(3) without libsystemd: READY, STOPPING, WATCHDOG, STATUS on $NOTIFY_SOCKET.

Minimal version written by the daemon engineer (API: ``SdNotifier.from_env()``
with ``ready()``, ``stopping()``, ``watchdog()``, ``status(text)``,
``watchdog_interval()``); every call is a no-op without ``NOTIFY_SOCKET``.
"""

from __future__ import annotations

import logging
import os
import socket
import time

logger = logging.getLogger("handoffd.sdnotify")


class SdNotifier:
    """Sends notifications to the service manager's datagram socket, if there is one."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._address = address
        self._watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls) -> SdNotifier:
        """From ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` (honouring ``WATCHDOG_PID``)."""
        address = os.environ.get("NOTIFY_SOCKET") or None
        usec: int | None = None
        raw = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        if raw.isdigit() and int(raw) > 0 and (not pid or pid == str(os.getpid())):
            usec = int(raw)
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify."""
        return self._address is not None

    def notify(self, message: str) -> bool:
        """Send one notification (``KEY=VALUE`` lines); False if it could not be sent."""
        if self._address is None:
            return False
        address = self._address
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.sendto(message.encode("utf-8"), address)
        except OSError as exc:
            logger.warning("sd_notify failed error=%s", exc.strerror)
            return False
        return True

    def ready(self) -> bool:
        """READY=1."""
        return self.notify("READY=1")

    def stopping(self) -> bool:
        """STOPPING=1."""
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        """RELOADING=1 with MONOTONIC_USEC (send ready() when the reload is done)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def watchdog(self) -> bool:
        """WATCHDOG=1."""
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """STATUS=<text> (one line)."""
        return self.notify("STATUS=" + " ".join(text.splitlines()))

    def watchdog_interval(self) -> float | None:
        """The watchdog timeout in seconds, or None when no watchdog is set."""
        return None if self._watchdog_usec is None else self._watchdog_usec / 1_000_000

    def close(self) -> None:
        """Close the socket (idempotent)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
