"""The data channel's dead-peer watch (pure polling logic, on a stand-in association)."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

import pytest

from handoffd.transport.webrtc.ackwatch import watch_acks


@dataclass
class Dtls:
    _RTCDtlsTransport__rx_packets: int = 0


@dataclass
class Sctp:
    transport: Dtls = field(default_factory=Dtls)
    _sent_queue: deque[int] = field(default_factory=deque)


@pytest.mark.asyncio
async def test_outstanding_data_and_no_packet_from_the_peer_is_silence() -> None:
    sctp = Sctp(_sent_queue=deque([1]))
    silent = asyncio.Event()
    await asyncio.wait_for(watch_acks(sctp, 0.5, silent.set), 30)
    assert silent.is_set()


@pytest.mark.asyncio
async def test_a_peer_that_keeps_answering_or_nothing_outstanding_is_never_silent() -> None:
    for outstanding, answering in ((True, True), (False, False)):
        sctp = Sctp(_sent_queue=deque([1] if outstanding else []))
        silent = asyncio.Event()
        watch = asyncio.create_task(watch_acks(sctp, 0.5, silent.set))
        for _ in range(12):  # 3 s: six times the limit
            await asyncio.sleep(0.25)
            if answering:
                sctp.transport._RTCDtlsTransport__rx_packets += 1
        assert not watch.done()
        assert not silent.is_set()
        watch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watch


@pytest.mark.asyncio
async def test_an_aiortc_without_the_counter_is_not_watched() -> None:
    class Bare:
        transport = object()
        _sent_queue = deque([1])

    silent = asyncio.Event()
    await asyncio.wait_for(watch_acks(Bare(), 0.1, silent.set), 30)
    assert not silent.is_set()
