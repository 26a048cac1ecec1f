"""A dead peer under a transfer on the data channel, seen in seconds: SCTP acknowledgements.

ICE consent (aioice: 6 failed checks 5 s apart) and the transfer protocol's idle timeout
(30 s) both take half a minute to notice a peer that vanished. While our SCTP association
has data in flight, a live peer answers within round trips: aiortc sends SACKs from its
event loop as packets arrive, whatever the application does with the data, so a busy peer
(fsyncing, CPU-loaded) still answers; on a lossy path the SACKs keep coming (with gap
blocks) even while a lost chunk holds the cumulative acknowledgement back. No packet at all
from the peer for ``limit`` seconds while data is outstanding means the peer is gone.

aiortc has no public view of this; the watch reads two attributes (``_sent_queue`` of its
``RTCSctpTransport``: chunks sent, not yet acknowledged; the packet counter its
``RTCDtlsTransport`` keeps for ``getStats``) and never writes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

POLL = 0.25
"""How often the association is looked at."""
LAG = 1.0
"""A poll this much late: our own loop was blocked, acknowledgements may be unread; start over."""


async def watch_acks(sctp: Any, limit: float, on_silent: Callable[[], None]) -> None:
    """Call ``on_silent`` once (and return) when data stayed outstanding without any
    acknowledgement progress for ``limit`` seconds; runs until cancelled otherwise."""
    loop = asyncio.get_running_loop()
    last = _received(sctp)
    if last is None:  # an aiortc without the counter: no watch (the slower signals remain)
        return
    heard = loop.time()
    while True:
        due = loop.time() + POLL
        await asyncio.sleep(POLL)
        now = loop.time()
        got = _received(sctp)
        outstanding = bool(getattr(sctp, "_sent_queue", None))
        if not outstanding or got != last or now - due > LAG:
            last, heard = got, now
            continue
        if now - heard >= limit:
            on_silent()
            return


def _received(sctp: Any) -> int | None:
    """Packets the association's DTLS transport received from the peer so far."""
    return getattr(sctp.transport, "_RTCDtlsTransport__rx_packets", None)
