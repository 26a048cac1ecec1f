"""One WebRTC peer inside a lab host, for the TURN lab test (test_lab_turn.py).

``python -m tests.transport.turn_peer SPEC.json``. The spec names the role
(``accept`` or ``connect``), the device's key file and PEM certificate, the
account CA and CRL, the lab address to gather host candidates on, the ICE
servers (as ``/v1/ice`` gave them) and, for ``connect``, the peer and its
signaling address. The ``accept`` side prints ``ready <port>`` once its
SignalingServer listens. Both print one JSON line at the end: ``ok`` and the
SHA-256 of the bytes sent/received, the nominated ICE pair's candidate types
and addresses, and the local candidate types; or ``error`` with the code.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from handoffd import identity
from handoffd.errors import HandoffError
from handoffd.transport import webrtc
from handoffd.transport.base import LocalIdentity
from handoffd.transport.signaling import SignalingServer, send_offer

CHUNK = webrtc.MAX_MESSAGE


def _local(spec: dict[str, Any]) -> LocalIdentity:
    key = identity.load_private_key(Path(spec["key_file"]))
    cert = identity.load_cert(spec["cert"].encode())
    ca = identity.load_cert(spec["ca"].encode())
    crl = identity.load_crl(spec["crl"].encode())
    return LocalIdentity(
        key=key,
        cert_der=identity.cert_to_der(cert),
        trust=identity.TrustAnchor.from_ca(ca, crl),
    )


def _options(spec: dict[str, Any]) -> webrtc.WebRtcOptions:
    servers = tuple(
        webrtc.IceServer(tuple(s["urls"]), s.get("username"), s.get("credential"))
        for s in spec["ice"]
    )
    return webrtc.WebRtcOptions(
        connect_timeout=float(spec["connect_timeout"]),
        ice_servers=servers,
        host_addresses=(spec["address"],),
        loopback=False,
    )


def _ice_facts(channel: webrtc.WebRtcChannel) -> dict[str, Any]:
    """The nominated candidate pair and the local candidates (aioice internals, read only)."""
    sctp = channel._pc.sctp
    assert sctp is not None
    connection = sctp.transport.transport.iceGatherer._connection
    pair = connection._nominated[1]
    local, remote = pair.local_candidate, pair.remote_candidate
    return {
        "pair": [local.type, remote.type],
        "pair_addresses": [f"{local.host}:{local.port}", f"{remote.host}:{remote.port}"],
        "local_types": sorted({c.type for c in connection.local_candidates}),
    }


async def accept(spec: dict[str, Any]) -> dict[str, Any]:
    local, options = _local(spec), _options(spec)
    accepted: asyncio.Queue[webrtc.Accepted] = asyncio.Queue()

    async def on_offer(offer: bytes) -> bytes:
        acc = await webrtc.accept(local=local, offer_envelope=offer, options=options)
        await accepted.put(acc)
        return acc.answer

    server = SignalingServer(spec["address"], 0, on_offer, local=lambda: local)
    await server.start()
    try:
        sys.stdout.write(f"ready {server.port}\n")
        sys.stdout.flush()
        acc = await asyncio.wait_for(accepted.get(), 60)
        try:
            channel = await acc.channel()
        except HandoffError as exc:
            await acc.close()
            return {"error": exc.code}
        facts = _ice_facts(channel)
        digest, size = hashlib.sha256(), 0
        while True:
            try:
                data = await asyncio.wait_for(channel.recv(), 60)
            except HandoffError as exc:
                if exc.code != "channel-closed":
                    return {"error": exc.code, "received": size}
                break
            digest.update(data)
            size += len(data)
        await channel.close()
        return {"ok": True, "sha256": digest.hexdigest(), "size": size, **facts}
    finally:
        await server.close()


async def connect(spec: dict[str, Any]) -> dict[str, Any]:
    local, options = _local(spec), _options(spec)
    host, port = spec["signal"]

    async def signal(offer: bytes) -> bytes:
        return await send_offer(
            host, int(port), offer, local=local, peer_device_id=spec["peer"], timeout=20
        )

    try:
        channel = await webrtc.connect(
            local=local, peer_device_id=spec["peer"], signal=signal, options=options
        )
    except HandoffError as exc:
        return {"error": exc.code}
    facts = _ice_facts(channel)
    payload = os.urandom(int(spec["payload"]))
    for i in range(0, len(payload), CHUNK):
        await channel.send(payload[i : i + CHUNK])
    await channel.close()
    return {
        "ok": True,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "size": len(payload),
        **facts,
    }


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    run = accept if spec["role"] == "accept" else connect
    async with asyncio.timeout(120):
        return await run(spec)


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    sys.stdout.write(json.dumps(asyncio.run(main(spec))) + "\n")
