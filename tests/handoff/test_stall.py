"""Stall deadlines of the transfer adapter over real aiortc (in process): a receiver that
accepted and then lets nothing progress (it answers pings only) is cut off by the sender."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest

from handoffd.errors import TransferError, TransportError
from handoffd.handoff.driver import run_sender
from handoffd.handoff.driver_events import SenderEvent
from handoffd.handoff.link import Link, make_hello
from handoffd.handoff.offer import build_manifest, new_handoff_id, sign_offer
from handoffd.items import Item
from handoffd.proto import codec
from handoffd.proto import transfer as core
from handoffd.transport import webrtc
from tests.transport.helpers import Account, Callee


async def _accept_then_nothing(channel: Any, hello: Any, seen: dict[str, Any]) -> None:
    """A receiver that accepts every item from 0 and then never acknowledges anything."""
    loop = asyncio.get_running_loop()
    c = core.ReceiverCore(hello, now=loop.time())
    c.start(loop.time())
    while not c.finished:
        for ev in c.events():
            if isinstance(ev, core.OfferReceived):
                c.accept({i.index: 0 for i in ev.manifest.items}, loop.time())
            elif isinstance(ev, core.WriteData):
                seen["bytes"] = seen.get("bytes", 0) + len(ev.data)
            elif isinstance(ev, core.Failed):
                seen["code"] = ev.code
        for msg in c.outgoing():
            await channel.send(codec.encode(msg))
        timer = c.next_timer()
        try:
            async with asyncio.timeout(max(0.0, (timer or loop.time() + 5) - loop.time())):
                data = await channel.recv()
        except TimeoutError:
            c.timer(loop.time())
            continue
        except TransportError:
            return
        c.receive_bytes(data, loop.time())


@pytest.mark.asyncio
async def test_a_sender_cuts_off_a_receiver_that_accepted_and_stalls() -> None:
    account = Account()
    a, b = account.device(), account.device()
    payload = os.urandom(12 * 1024 * 1024)  # three windows: the stream must wait for acks
    seen: dict[str, Any] = {}
    async with Callee(b) as callee:
        loop = asyncio.get_running_loop()
        channel = await webrtc.connect(
            local=a.local, peer_device_id=b.id, signal=callee.signal(), deadline=loop.time() + 30
        )
        theirs = await asyncio.wait_for(callee.channels.get(), 30)
        peer = asyncio.create_task(
            _accept_then_nothing(theirs, make_hello(b.id, account.trust), seen)
        )
        link = Link(channel, on_event=lambda _e: None, clock=time.monotonic)
        link.start()
        manifest, sources = build_manifest(
            handoff_id=new_handoff_id(),
            session_id=new_handoff_id(),
            app_id="org.example.stall",
            title="stall",
            context={},
            items=[Item.of_data("document", "big.bin", payload)],
            sender=a.id,
            recipient=b.id,
            now=time.time(),
        )

        async def nothing(_event: SenderEvent) -> None:
            return None

        try:
            with pytest.raises(TransferError) as err:
                await asyncio.wait_for(
                    run_sender(
                        link,
                        hello=make_hello(a.id, account.trust),
                        offer=sign_offer(a.key, a.local.cert_der, manifest),
                        manifest=manifest,
                        sources=sources,
                        consumer=nothing,
                        resumed_wait=0,
                        stall=2.0,
                    ),
                    60,
                )
            assert err.value.code == "stalled"
            assert err.value.retry  # the handoff retries; the receiver resumes from its acks
            assert 0 < seen["bytes"] < len(payload)
        finally:
            await link.close()
            await channel.close()
            peer.cancel()
            await asyncio.gather(peer, return_exceptions=True)
