"""Retry policy of outgoing handoffs (pure): the backoff, which failures are final, and what
to report when no path worked."""

from __future__ import annotations

from handoffd import backoff as _backoff
from handoffd.errors import HandoffError, TransportError
from handoffd.transport.base import PeerAuthError, PeerRefusedError
from handoffd.transport.connector import NoPathError

# Refusals that another attempt cannot change (until trust state changes).
FINAL_REFUSALS = ("cert-", "envelope-", "tls-", "tlsv1-alert-")

LOCAL_FAILURES = frozenset(
    {
        "source-changed",
        "session-not-found",
        "internal",
        "item-file-unreadable",
        "item-file-not-regular",
    }
)
"""Codes of a handoff that failed here (not declined by the peer)."""


def backoff(attempt: int, *, base: float = 1.0, cap: float = 60.0) -> float:
    """Delay before retry ``attempt`` (1-based): exponential, capped, jittered in its upper half."""
    return _backoff.delay(attempt, base=base, cap=cap)


def reason(error: HandoffError) -> str | None:
    """The peer's own reason for refusing us, if it gave one."""
    peer_code = getattr(error, "peer_code", None)
    return peer_code if isinstance(peer_code, str) else None


def refusal_is_final(error: HandoffError) -> bool:
    """True for authentication failures, ours or the peer's: retrying would only repeat them."""
    if isinstance(error, PeerAuthError):
        return True
    peer_reason = reason(error)
    return peer_reason is not None and peer_reason.startswith(FINAL_REFUSALS)


def path_error(exc: NoPathError) -> HandoffError:
    """What to report when no path worked: the peer's refusal first, else not found, else the last."""
    for _name, error in exc.attempts:
        if isinstance(error, PeerRefusedError):
            return error
    if exc.attempts and all(e.code == "no-route" for _n, e in exc.attempts):
        return TransportError("the device is not nearby or online", code="peer-not-found")
    real = [e for _n, e in exc.attempts if e.code != "no-route"]
    return real[-1] if real else exc
