"""Account passwords: Argon2id hashes (argon2-cffi) and a bounded executor that checks them.

Hashes are PHC strings (``$argon2id$v=19$m=..,t=..,p=..$salt$hash``); those
written by earlier versions (cryptography's Argon2id) verify unchanged.
argon2-cffi is the reference implementation and is safe to call from several
threads at once (cryptography 50's Argon2id with ``lanes > 1`` deadlocks when
two derivations run concurrently, then raises MemoryError; issue #16).

The server checks passwords only on ``PasswordChecker``'s own threads, never
on the event loop's shared default executor, so a burst of logins cannot stall
pairing, CRLs or signed device requests; past ``max_pending`` checks it refuses
at once with ``ServerError(login-busy, 503)`` and a retry hint.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

from handoffd.errors import ServerError

# RFC 9106's second recommended option: t=3, p=4, m=64 MiB.
ARGON2_ITERATIONS = 3
ARGON2_LANES = 4
ARGON2_MEMORY_KIB = 64 * 1024
MAX_PASSWORD = 1024
BUSY_RETRY_AFTER = 5
_HASH_LEN = 32
_SALT_LEN = 16
_MAX_MEMORY_KIB = 4 * 1024 * 1024

_hasher = argon2.PasswordHasher(
    time_cost=ARGON2_ITERATIONS,
    memory_cost=ARGON2_MEMORY_KIB,
    parallelism=ARGON2_LANES,
    hash_len=_HASH_LEN,
    salt_len=_SALT_LEN,
    type=argon2.Type.ID,
)
_dummy_lock = threading.Lock()
_dummy: str | None = None


def hash_password(password: str) -> str:
    """Argon2id hash of ``password`` in PHC string form; ValueError if empty or too long."""
    if not password or len(password) > MAX_PASSWORD:
        raise ValueError("password must be 1..1024 characters")
    return _hasher.hash(password)


def check_password(password: str, encoded: str) -> bool:
    """True if ``password`` matches the PHC-encoded Argon2id hash; False for anything malformed."""
    if not password or len(password) > MAX_PASSWORD or not encoded.startswith("$argon2id$"):
        return False
    try:
        params = argon2.extract_parameters(encoded)
    except (InvalidHashError, ValueError):
        return False
    if not (
        8 <= params.memory_cost <= _MAX_MEMORY_KIB
        and 1 <= params.time_cost <= 64
        and 1 <= params.parallelism <= 64
    ):
        return False
    try:
        return _hasher.verify(encoded, password)
    except (VerificationError, InvalidHashError):
        return False


def _dummy_hash() -> str:
    """A fixed hash so that unknown accounts cost a login as much as known ones."""
    global _dummy
    with _dummy_lock:
        if _dummy is None:
            _dummy = hash_password("handoff-dummy-password")
        return _dummy


def check_or_dummy(password: str, encoded: str | None) -> bool:
    """``check_password``, or the same work against a dummy hash (then False) when ``encoded`` is None."""
    if encoded is None:
        check_password(password, _dummy_hash())
        return False
    return check_password(password, encoded)


class PasswordChecker:
    """Checks passwords on ``workers`` threads of its own, with at most ``max_pending`` admitted."""

    def __init__(self, *, workers: int = 2, max_pending: int = 8) -> None:
        if workers < 1 or max_pending < workers:
            raise ValueError("need workers >= 1 and max_pending >= workers")
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="password"
        )
        self._max_pending = max_pending
        self._pending = 0
        self._closed = False

    @property
    def pending(self) -> int:
        """Checks admitted and not yet finished."""
        return self._pending

    async def check(self, password: str, encoded: str | None) -> bool:
        """``check_or_dummy`` on this checker's threads; ServerError(login-busy, 503) when full."""
        if self._closed or self._pending >= self._max_pending:
            raise ServerError(
                "too many logins are being checked; try again in a few seconds",
                code="login-busy",
                status=503,
            )
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, check_or_dummy, password, encoded)
        self._pending += 1
        # The slot is freed when the thread is done, not when this request goes away.
        future.add_done_callback(self._release)
        return await asyncio.shield(future)

    def _release(self, _future: asyncio.Future[bool]) -> None:
        self._pending -= 1

    def close(self) -> None:
        """Stop taking checks and drop queued ones (idempotent; running ones finish)."""
        if not self._closed:
            self._closed = True
            self._pool.shutdown(wait=False, cancel_futures=True)
