"""Run inside a fresh network namespace with only loopback up (see test_loopback_netns.py).

Connects two devices with default options (127.0.0.1 is offered because there
is no other address) and once more with loopback=False (must not connect);
prints one JSON line with the results.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys

from handoffd.errors import HandoffError
from handoffd.transport import webrtc
from tests.transport.helpers import Account, Callee


async def main() -> dict[str, object]:
    account = Account()
    alice, bob = account.device(), account.device()
    result: dict[str, object] = {}
    async with Callee(bob) as callee:
        a = await webrtc.connect(local=alice.local, peer_device_id=bob.id, signal=callee.signal())
        b = await asyncio.wait_for(callee.channels.get(), 30)
        sctp = a._pc.sctp
        assert sctp is not None
        result["hosts"] = sorted(
            {c.ip for c in sctp.transport.transport.iceGatherer.getLocalCandidates()}
        )
        payload = os.urandom(1024 * 1024)
        for i in range(0, len(payload), webrtc.MAX_MESSAGE):
            await a.send(payload[i : i + webrtc.MAX_MESSAGE])
        await a.close()
        digest = hashlib.sha256()
        while True:
            try:
                digest.update(await asyncio.wait_for(b.recv(), 30))
            except HandoffError:
                break
        await b.close()
        result["default"] = digest.digest() == hashlib.sha256(payload).digest()

    no_loopback = webrtc.WebRtcOptions(loopback=False, connect_timeout=2.0)
    async with Callee(bob, options=no_loopback) as callee:
        try:
            ch = await webrtc.connect(
                local=alice.local,
                peer_device_id=bob.id,
                signal=callee.signal(),
                options=no_loopback,
            )
        except HandoffError as exc:
            result["no_loopback"] = exc.code
        else:
            await ch.close()
            result["no_loopback"] = "connected"
    return result


if __name__ == "__main__":
    sys.stdout.write(json.dumps(asyncio.run(main())) + "\n")
