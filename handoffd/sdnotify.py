"""sd_notify(3) without libsystemd: READY, RELOADING, STOPPING, WATCHDOG, STATUS.

``SdNotifier.from_env()`` reads ``NOTIFY_SOCKET`` (a path, or ``@name`` in the
abstract namespace) and ``WATCHDOG_USEC``/``WATCHDOG_PID``. Without
``NOTIFY_SOCKET`` every call is a silent no-op. Sending never blocks and never
raises: a failure is logged and the call returns False, because a service
manager that went away must not take the daemon down with it.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Mapping

logger = logging.getLogger("handoffd.sdnotify")

ENV_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
_KEY = re.compile(r"[A-Z_][A-Z0-9_]*")


def _socket_address(raw: str | None) -> str | None:
    """The ``sendto`` address for a ``NOTIFY_SOCKET`` value; None if absent or unsupported."""
    if not raw:
        return None
    if raw.startswith("@") and len(raw) > 1:
        return "\0" + raw[1:]  # abstract namespace
    if raw.startswith("/"):
        return raw
    # e.g. "vsock:..." (systemd >= 253, VMs) or a relative path: not for us.
    logger.warning("NOTIFY_SOCKET is not a Unix socket path; not notifying value=%r", raw)
    return None


class SdNotifier:
    """Sends notifications to the service manager's datagram socket, if there is one."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._address = address
        self._watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._closed = False
        self._failing = False

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, unset_environment: bool = False
    ) -> SdNotifier:
        """From ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` (default ``os.environ``).

        ``unset_environment`` removes the three from ``os.environ`` afterwards, so
        child processes (launched apps) do not inherit them.
        """
        env = os.environ if environ is None else environ
        address = _socket_address(env.get("NOTIFY_SOCKET"))
        usec: int | None = None
        raw = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if raw:
            if raw.isascii() and raw.isdigit() and int(raw) > 0:
                if not pid or pid == str(os.getpid()):
                    usec = int(raw)
            else:
                logger.warning("WATCHDOG_USEC is not a positive integer value=%r", raw)
        if unset_environment:
            for name in ENV_VARS:
                os.environ.pop(name, None)
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify."""
        return self._address is not None and not self._closed

    def notify(self, **fields: object) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram (``notify(READY=1, STATUS="up")``).

        True if the datagram was sent; False without a socket or on any send
        failure (logged). A key that is not ``[A-Z_][A-Z0-9_]*`` is a
        programming error: ValueError. Newlines in values become spaces.
        """
        for key in fields:
            if not _KEY.fullmatch(key):
                raise ValueError(f"not an sd_notify field name: {key!r}")
        if not fields or not self.enabled:
            return False
        lines = (f"{key}={' '.join(str(value).splitlines())}" for key, value in fields.items())
        return self._send("\n".join(lines).encode("utf-8", errors="replace"))

    def _send(self, datagram: bytes) -> bool:
        address = self._address
        if address is None:
            return False
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.setblocking(False)  # noqa: FBT003
                self._sock = sock
            self._sock.sendto(datagram, address)
        except OSError as exc:
            # Warn once per failing stretch: the watchdog would repeat it every few seconds.
            log = logger.debug if self._failing else logger.warning
            log("sd_notify failed errno=%s error=%s", exc.errno, exc.strerror or exc)
            self._failing = True
            return False
        if self._failing:
            logger.info("sd_notify works again")
            self._failing = False
        return True

    def ready(self) -> bool:
        """READY=1: startup (or a reload) is complete."""
        return self.notify(READY=1)

    def stopping(self) -> bool:
        """STOPPING=1: shutdown has begun."""
        return self.notify(STOPPING=1)

    def reloading(self) -> bool:
        """RELOADING=1 with MONOTONIC_USEC (send ready() when the reload is done)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(RELOADING=1, MONOTONIC_USEC=usec)

    def watchdog(self) -> bool:
        """WATCHDOG=1: the keep-alive ping."""
        return self.notify(WATCHDOG=1)

    def status(self, text: str) -> bool:
        """STATUS=<text>, on one line."""
        return self.notify(STATUS=text)

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog() pings (half of WATCHDOG_USEC); None without a watchdog."""
        return None if self._watchdog_usec is None else self._watchdog_usec / 2_000_000

    def close(self) -> None:
        """Close the socket; later calls are no-ops (idempotent)."""
        self._closed = True
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
