"""Accept-level protection for TCP listeners: connection caps counted from accept, bounded logs.

A listening socket made by :func:`bind` is a :class:`GuardedListener`: its
``accept()`` admits a connection only while its source address (an IPv6
address by its /64) holds fewer than ``max_per_address`` live connections and
the listener fewer than ``max_connections``; anything else is reset at once,
before a TLS handshake or a protocol byte costs anything. A connection counts
until its socket is closed, whoever closes it (asyncio's transports close the
socket they were given). ``accept()`` also never lets asyncio see "out of
descriptors": asyncio 3.11 logs a traceback and schedules a retry for every
pass of its accept loop (tens of thousands of lines a minute); here the error
is logged at most once per interval and the pass ends quietly.

Works for any asyncio server: pass one of the sockets to
``loop.create_server(..., sock=...)`` or ``asyncio.start_server(..., sock=...)``
together with an ``ssl_handshake_timeout``. Nothing here knows HTTP or TLS.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from handoffd.errors import ConfigError

log = logging.getLogger("handoffd.netguard")

_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_MAX_REFUSED_PER_PASS = 64  # then let the event loop run other work; it calls back at once
_BACKOFF = 0.5  # seconds of quiet after asyncio was told "out of descriptors"
_LINGER_RESET = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT for refused peers
_ASYNCIO_ACCEPT_MESSAGE = "socket.accept() out of system resource"

__all__ = [
    "AcceptLimits",
    "ConnectionGuard",
    "GuardedListener",
    "RateLimitedLog",
    "address_key",
    "auto_max_connections",
    "bind",
    "install_asyncio_accept_log_filter",
    "raise_nofile_limit",
]


@dataclass(frozen=True)
class AcceptLimits:
    """Caps on live connections (``max_per_address`` 0: none) and the TLS handshake's deadline."""

    max_connections: int
    max_per_address: int = 0
    handshake_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ConfigError("the connection cap must be at least 1", code="bad-connection-limit")
        if self.max_per_address < 0:
            raise ConfigError(
                "the per-address connection cap must be 0 (none) or more",
                code="bad-connection-limit",
            )
        if not self.handshake_timeout > 0:
            raise ConfigError("the handshake timeout must be positive", code="bad-timeout")


class RateLimitedLog:
    """Logs a message at most once per ``interval`` seconds, with how many were suppressed."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, level: int, message: str, *args: object) -> bool:
        """Log ``message % args`` plus ``suppressed=N`` unless logged within the interval."""
        now = self._clock()
        with self._lock:
            if now < self._next.get(message, float("-inf")):
                self._suppressed[message] = self._suppressed.get(message, 0) + 1
                return False
            self._next[message] = now + self._interval
            suppressed = self._suppressed.pop(message, 0)
        self._logger.log(level, f"{message} suppressed=%d", *args, suppressed)  # noqa: G004
        return True


def address_key(address: object) -> str:
    """The key a source address is counted under: IPv4 itself, IPv6 its /64, else ``""``."""
    host = address[0] if isinstance(address, tuple) and address else None
    if not isinstance(host, str):
        return ""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return ""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class ConnectionGuard:
    """Counts live connections per source address and in total; admits or refuses at accept."""

    def __init__(self, limits: AcceptLimits, *, name: str, logger: logging.Logger = log) -> None:
        self.limits = limits
        self.name = name
        self._per_address: dict[str, int] = {}
        self._total = 0
        self._lock = threading.Lock()
        self._log = RateLimitedLog(logger)
        self.refused_per_address = 0
        self.refused_total = 0
        self.accept_errors = 0

    @property
    def total(self) -> int:
        """Live connections admitted and not yet closed."""
        return self._total

    def count(self, address: object) -> int:
        """Live connections counted under ``address``'s key."""
        return self._per_address.get(address_key(address), 0)

    def admit(self, address: object) -> str | None:
        """Count a new connection from ``address``; its key, or None if a cap refuses it."""
        key = address_key(address)
        with self._lock:
            if self._total >= self.limits.max_connections:
                self.refused_total += 1
                refused = "total"
            elif (
                self.limits.max_per_address
                and self._per_address.get(key, 0) >= self.limits.max_per_address
            ):
                self.refused_per_address += 1
                refused = "address"
            else:
                self._total += 1
                self._per_address[key] = self._per_address.get(key, 0) + 1
                return key
        if refused == "total":
            self._log(
                logging.WARNING,
                "connection refused: listener full listener=%s cap=%d",
                self.name,
                self.limits.max_connections,
            )
        else:
            self._log(
                logging.INFO,
                "connection refused: too many from one address listener=%s address=%s cap=%d",
                self.name,
                key or "-",
                self.limits.max_per_address,
            )
        return None

    def release(self, key: str) -> None:
        """Forget one connection counted under ``key`` (called once per admitted connection)."""
        with self._lock:
            left = self._per_address.get(key, 0) - 1
            if left > 0:
                self._per_address[key] = left
            else:
                self._per_address.pop(key, None)
            self._total = max(0, self._total - 1)

    def accept_failed(self, exc: OSError) -> None:
        """Note an accept that failed for want of descriptors or memory (logged rate-limited)."""
        self.accept_errors += 1
        self._log(
            logging.ERROR,
            "accept failed: out of resources listener=%s errno=%s live=%d",
            self.name,
            errno.errorcode.get(exc.errno or 0, str(exc.errno)),
            self._total,
        )


class _GuardedConnection(socket.socket):
    """An accepted socket that gives its slot back to the guard when closed or detached."""

    _release: Callable[[], None] | None = None

    def _give_back(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def close(self) -> None:
        """Close the socket and free its slot (idempotent)."""
        try:
            super().close()
        finally:
            self._give_back()

    def detach(self) -> int:
        """Detach the descriptor; the slot is freed (the guard no longer sees its close)."""
        self._give_back()
        return super().detach()


class GuardedListener(socket.socket):
    """A listening socket whose ``accept()`` enforces a :class:`ConnectionGuard`."""

    guard: ConnectionGuard
    _quiet_until = 0.0

    def accept(self) -> tuple[socket.socket, object]:
        """The next admitted connection; refused ones are reset and skipped."""
        refused = 0
        while True:
            if time.monotonic() < self._quiet_until:
                raise ConnectionAbortedError("accept backing off")
            try:
                fd, address = self._accept()  # type: ignore[attr-defined]
            except OSError as exc:
                if exc.errno not in _RESOURCE_ERRNOS:
                    raise
                self.guard.accept_failed(exc)
                # asyncio takes the socket out of its selector for a while; every later
                # call in the same pass ends it quietly instead of logging again.
                self._quiet_until = time.monotonic() + _BACKOFF
                raise
            key = self.guard.admit(address)
            if key is None:
                _reset(fd)
                refused += 1
                if refused >= _MAX_REFUSED_PER_PASS:
                    raise ConnectionAbortedError("refused a burst of connections")
                continue
            conn = _GuardedConnection(self.family, self.type, self.proto, fileno=fd)
            conn._release = _releaser(self.guard, key)
            if socket.getdefaulttimeout() is None and self.gettimeout():
                conn.settimeout(None)  # as socket.accept does for a blocking listener
            return conn, address


def _releaser(guard: ConnectionGuard, key: str) -> Callable[[], None]:
    return lambda: guard.release(key)


def _reset(fd: int) -> None:
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=fd)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        finally:
            sock.close()


def bind(
    host: str | None,
    port: int,
    guard: ConnectionGuard,
    *,
    backlog: int = 128,
    reuse_address: bool = True,
) -> list[GuardedListener]:
    """Listening sockets for ``host``:``port`` (every address it resolves to), all guarded.

    Raises OSError as ``socket.bind`` does; nothing stays open on failure.
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    seen: set[tuple[int, object]] = set()
    listeners: list[GuardedListener] = []
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = GuardedListener(family, kind, proto)
            sock.guard = guard
            listeners.append(sock)
            if reuse_address and os.name == "posix":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.settimeout(0.0)  # non-blocking, as the event loop wants it
    except BaseException:
        for sock in listeners:
            sock.close()
        raise
    install_asyncio_accept_log_filter()
    return listeners


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (where there is one); (soft, hard) after."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return (0, 0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):  # macOS caps it below the hard limit (kern.maxfilesperproc)
        return resource.getrlimit(resource.RLIMIT_NOFILE)
    return target, hard


def auto_max_connections(reserve: int = 256, ceiling: int = 16384, floor: int = 64) -> int:
    """A total connection cap that leaves ``reserve`` descriptors of the soft limit free."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return 1024
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return ceiling
    return max(floor, min(ceiling, soft - reserve))


class _AsyncioAcceptFilter(logging.Filter):
    """Drops asyncio's per-pass "out of system resource" tracebacks (the guard logs instead)."""

    def __init__(self) -> None:
        super().__init__()
        self._log = RateLimitedLog(log, interval=60.0)

    def filter(self, record: logging.LogRecord) -> bool:
        """False for asyncio's accept-resource record; once a minute it is summarised instead."""
        if not isinstance(record.msg, str) or not record.msg.startswith(_ASYNCIO_ACCEPT_MESSAGE):
            return True
        self._log(logging.ERROR, "asyncio accept failed: out of resources")
        return False


_filter_lock = threading.Lock()
_filter: _AsyncioAcceptFilter | None = None


def install_asyncio_accept_log_filter() -> None:
    """Put the filter on the ``asyncio`` logger once per process (idempotent)."""
    global _filter
    with _filter_lock:
        if _filter is None:
            _filter = _AsyncioAcceptFilter()
            logging.getLogger("asyncio").addFilter(_filter)
