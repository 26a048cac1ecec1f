"""Terminal output shared by ``handoff`` and its demo: untrusted text made printable, tables,
and the live progress of one handoff."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from handoffd.control.client import HandoffClient

FINAL_STATES = frozenset({"resumed", "failed", "cancelled", "declined"})


def clean(value: object) -> str:
    """Printable text: control characters (ANSI escapes included) become '?'."""
    return "".join(ch if ch.isprintable() else "?" for ch in str(value))


def table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    """An aligned text table."""
    cells = [[clean(h) for h in headers], *[[clean(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def state_text(
    state: str, attempts: int, next_retry_at: float | None, error: Mapping[str, str] | None
) -> str:
    """``retrying (attempt 3, next in 8s: connect-timeout)``, ``failed: cert-revoked``, ..."""
    reason = "" if not error else str(error.get("reason") or error.get("code") or "")
    if state == "retrying":
        wait = (
            ""
            if next_retry_at is None
            else f", next in {max(0, int(next_retry_at - time.time()))}s"
        )
        return f"retrying (attempt {attempts}{wait}{': ' + reason if reason else ''})"
    if state == "waiting-for-device" and next_retry_at is not None:
        hours, rest = divmod(max(0, int(next_retry_at - time.time())), 3600)
        return f"{state} (waits up to {hours}h{rest // 60:02d}m)"
    if state in ("failed", "declined") and reason:
        return f"{state}: {reason}"
    return state


def _bar(done: int, total: int, width: int = 28) -> str:
    filled = width if total <= 0 else min(width, done * width // total)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


async def follow(
    client: HandoffClient,
    handoff_id: str,
    *,
    prefix: str = "",
    until: Callable[[Mapping[str, Any]], bool] | None = None,
) -> dict[str, Any]:
    """Draw the handoff's progress (bytes, rate, time left, state, path) until it ends (or
    ``until`` says it is enough); its record.

    On a terminal the bar is redrawn in place; otherwise one line per state.
    """
    tty = sys.stdout.isatty()
    start = time.monotonic()
    last_state: tuple[str, str] | None = None
    last_line = ""
    while True:
        h: dict[str, Any] = await client.request("GET", f"/v1/handoffs/{handoff_id}")
        state = str(h.get("state"))
        done, total = int(h.get("bytes_done") or 0), int(h.get("bytes_total") or 0)
        elapsed = max(time.monotonic() - start, 1e-6)
        rate = done / elapsed
        left = (total - done) / rate if rate > 0 and total > done else 0
        shown = state_text(
            state, int(h.get("attempts") or 0), h.get("next_retry_at"), h.get("error")
        )
        path = str(h.get("path") or "-")
        line = clean(
            f"{prefix}{_bar(done, total)} {human_size(done)}/{human_size(total)} {human_size(rate)}/s "
            f"{int(left)}s left  {shown} via {path}"
        )
        if tty:
            if (state, path) != last_state and last_state:
                print()
            print("\r" + line.ljust(len(last_line)), end="", flush=True)
        elif (state, path) != last_state:
            print(line, flush=True)
        last_line, last_state = line, (state, path)
        if state in FINAL_STATES or (until is not None and until(h)):
            if tty:
                print()
            return h
        await asyncio.sleep(0.2)
