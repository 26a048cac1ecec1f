"""Terminal output shared by ``handoff`` and its demo: untrusted text made printable, tables,
and the live progress of one handoff."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
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


def grouped_id(device_id: str) -> str:
    """A device id grouped in fours for reading (as ``identity.format_device_id``, without
    importing the certificate code)."""
    return "-".join(device_id[i : i + 4] for i in range(0, len(device_id), 4))


def _bar(done: int, total: int, width: int) -> str:
    filled = width if total <= 0 else min(width, done * width // total)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def ago(ts: float | None) -> str:
    """``5m ago``, ``2h ago``, ``3d ago`` (Unix time ``ts``); ``-`` for none."""
    if not ts:
        return "-"
    seconds = max(0, int(time.time() - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


@dataclass
class Rate:
    """Bytes per second while bytes move: from the first progress to the latest change, so the
    wait before the transfer (connecting) and after it (waiting for the resume) do not count."""

    first: tuple[float, int] | None = None
    last: tuple[float, int] | None = None

    def update(self, now: float, done: int) -> None:
        """Note ``done`` bytes at ``now`` (monotonic)."""
        if self.first is None or (self.last is None and done == self.first[1]):
            self.first = (now, done)  # nothing moved yet: the clock starts at the last still count
        elif self.last is None or done != self.last[1]:
            self.last = (now, done)

    def per_second(self) -> float | None:
        """The rate, None until two different counts were seen."""
        if self.first is None or self.last is None or self.last[0] <= self.first[0]:
            return None
        moved = self.last[1] - self.first[1]
        return moved / (self.last[0] - self.first[0]) if moved > 0 else None


def progress_line(h: Mapping[str, Any], rate: float | None, width: int, prefix: str = "") -> str:
    """One line of progress, at most ``width - 1`` columns (no wrap, the redraw stays in place).

    ``12.0/40.0 MiB 3.1 MiB/s ETA 9s [####....] transferring via direct``; the ETA
    is ``?`` until a rate is known; the bar shrinks (then goes) on narrow terminals.
    """
    state = str(h.get("state"))
    done, total = int(h.get("bytes_done") or 0), int(h.get("bytes_total") or 0)
    shown = state_text(state, int(h.get("attempts") or 0), h.get("next_retry_at"), h.get("error"))
    eta = "?"
    if done >= total > 0:
        eta = "0s"
    elif rate:
        eta = _duration((total - done) / rate)
    speed = f"{human_size(rate)}/s" if rate else "-/s"
    head = clean(f"{prefix}{human_size(done)}/{human_size(total)} {speed} ETA {eta}")
    tail = clean(f"{shown} via {h.get('path') or '-'}")
    room = width - 1 - len(head) - len(tail) - 2
    bar = f" {_bar(done, total, min(28, room - 3))} " if room >= 8 else " "
    return (head + bar + tail)[: max(1, width - 1)]


def _columns(out: TextIO) -> int:
    """The width of the terminal ``out`` writes to (stdout may be redirected), else 80."""
    try:
        return os.get_terminal_size(out.fileno()).columns or 80
    except (OSError, ValueError):
        return shutil.get_terminal_size((80, 24)).columns


async def follow(
    client: HandoffClient,
    handoff_id: str,
    *,
    prefix: str = "",
    out: TextIO | None = None,
    until: Callable[[Mapping[str, Any]], bool] | None = None,
) -> dict[str, Any]:
    """Draw the handoff's progress on stderr until it ends (or ``until`` says it is
    enough); its record.

    On a terminal the line is redrawn in place, fitted to the terminal's width;
    otherwise one line per change of state or path.
    """
    import asyncio  # here: the quick commands that import this module need no event loop

    out = out or sys.stderr
    tty = out.isatty()
    rate = Rate()
    last_state: tuple[str, str] | None = None
    last_len = 0
    while True:
        h: dict[str, Any] = await client.request("GET", f"/v1/handoffs/{handoff_id}")
        state, path = str(h.get("state")), str(h.get("path") or "-")
        rate.update(time.monotonic(), int(h.get("bytes_done") or 0))
        width = _columns(out) if tty else 10_000
        line = progress_line(h, rate.per_second(), width, prefix)
        if tty:
            if (state, path) != last_state and last_state:
                out.write("\n")
                last_len = 0
            out.write("\r" + line.ljust(last_len) if len(line) < last_len else "\r" + line)
            out.flush()
            last_len = len(line)
        elif (state, path) != last_state:
            out.write(line + "\n")
            out.flush()
        last_state = (state, path)
        if state in FINAL_STATES or (until is not None and until(h)):
            if tty:
                out.write("\n")
            return h
        await asyncio.sleep(0.2)
