"""Rogue clients run inside a lab host by the tests.

A LAN signaling rogue::

    python -m tests.handoff.rogues rogue --home HOME --to DEVICE_ID --at HOST:PORT

It speaks LAN signaling to a daemon as the device whose identity is in HOME
(standing in for an attacker who captured that device's offers on the LAN, or
stole its key), and prints one JSON object: for each case, the code the target
refused with (or ``"connected"``).

A relay intruder::

    python -m tests.handoff.rogues relay-rogue --server URL --fingerprint FP \
        --own INVITE --other INVITE --to DEVICE_ID

It pairs two fresh devices through the invites (``--own``: of the target's
account; ``--other``: of another account), opens a relay session from the own
device to DEVICE_ID (which the target's daemon joins), then, as the device of
the other account, tries to join that session (with the stolen ticket, and
with a made-up token in the target's role) and to open a relay to DEVICE_ID
itself; it prints one JSON object: for each attempt, the server's code (or
``"joined"`` / ``"opened"``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

# ---------------------------------------------------------------- the rogue client


def _flip_sdp_fingerprint(payload: bytes) -> bytes:
    """An offer payload whose SDP sha-256 fingerprint has its last byte changed."""
    import msgpack

    inner = msgpack.unpackb(payload, raw=False)
    sdp: str = inner["sdp"]
    line = next(x for x in sdp.split("\r\n") if x.startswith("a=fingerprint:sha-256 "))
    inner["sdp"] = sdp.replace(line, line[:-2] + ("00" if not line.endswith("00") else "11"))
    return bytes(msgpack.packb(inner, use_bin_type=True))


async def rogue(home: Path, to: str, host: str, port: int) -> dict[str, str]:
    """Run the rogue cases against the daemon at ``host:port`` (device ``to``); codes by case."""
    import msgpack

    from handoffd import envelope, identity
    from handoffd.errors import HandoffError
    from handoffd.paths import Paths
    from handoffd.transport import webrtc
    from handoffd.transport.base import LocalIdentity, PeerRefusedError
    from handoffd.transport.signaling import send_offer

    paths = Paths.resolve(home)
    key = identity.load_private_key(paths.device_key)
    cert = identity.load_cert(paths.device_cert.read_bytes())
    ca = identity.load_cert(paths.account_ca.read_bytes())
    trust = identity.TrustAnchor.from_ca(ca, None)
    local = LocalIdentity(key=key, cert_der=identity.cert_to_der(cert), trust=trust)
    results: dict[str, str] = {}

    async def attempt(name: str, tamper: Callable[[bytes], bytes] | None) -> bytes | None:
        """Connect through signaling with ``tamper`` applied to the offer; the offer sent."""
        sent: list[bytes] = []

        async def signal(offer: bytes) -> bytes:
            wire = tamper(offer) if tamper is not None else offer
            sent.append(wire)
            return await send_offer(host, port, wire, local=local, peer_device_id=to, timeout=10)

        loop = asyncio.get_running_loop()
        try:
            channel = await webrtc.connect(
                local=local, peer_device_id=to, signal=signal, deadline=loop.time() + 15
            )
        except PeerRefusedError as exc:
            results[name] = exc.peer_code
            return sent[0] if sent else None
        except HandoffError as exc:
            results[name] = f"local:{exc.code}"
            return sent[0] if sent else None
        await channel.close()
        results[name] = "connected"
        return sent[0]

    # 1. A genuine offer: the channel opens (what an eavesdropper could have captured) ...
    captured = await attempt("genuine", None)
    # ... sent again byte for byte: a replay.
    if captured is not None:
        try:
            await send_offer(host, port, captured, local=local, peer_device_id=to, timeout=10)
            results["replayed"] = "answered"
        except PeerRefusedError as exc:
            results["replayed"] = exc.peer_code

    # 2. Without the key: the SDP's DTLS fingerprint changed inside a signed offer.
    def unsigned_change(offer: bytes) -> bytes:
        outer = msgpack.unpackb(offer, raw=False)
        body = msgpack.unpackb(outer["body"], raw=False)
        body[6] = _flip_sdp_fingerprint(body[6])
        outer["body"] = msgpack.packb(body, use_bin_type=True)
        return bytes(msgpack.packb(outer, use_bin_type=True))

    await attempt("tampered-fingerprint", unsigned_change)

    # 3. With the key: re-signed, but the SDP's fingerprint is not the signed one.
    def resigned_change(offer: bytes) -> bytes:
        outer = msgpack.unpackb(offer, raw=False)
        body = msgpack.unpackb(outer["body"], raw=False)
        return envelope.seal(
            key,
            local.cert_der,
            purpose=webrtc.PURPOSE_OFFER,
            recipient=to,
            payload=_flip_sdp_fingerprint(body[6]),
            now=time.time(),
        )

    await attempt("resigned-fingerprint-mismatch", resigned_change)

    # 4. Addressed to another device than the one listening.
    def readdressed(offer: bytes) -> bytes:
        outer = msgpack.unpackb(offer, raw=False)
        body = msgpack.unpackb(outer["body"], raw=False)
        return envelope.seal(
            key,
            local.cert_der,
            purpose=webrtc.PURPOSE_OFFER,
            recipient=local.device_id,  # a device id of the account, not the target's
            payload=body[6],
            now=time.time(),
        )

    await attempt("wrong-recipient", readdressed)
    return results


# ---------------------------------------------------------------- the relay intruder


async def relay_rogue(
    server_url: str, fingerprint: str | None, own_invite: str, other_invite: str, to: str
) -> dict[str, str]:
    """See the module docstring (``relay-rogue``); the codes by attempt."""
    import secrets

    from handoffd import identity
    from handoffd.errors import ServerError
    from handoffd.serverlink import RelayTicket, ServerClient, ServerLink, parse_invite

    loop = asyncio.get_running_loop()
    results: dict[str, str] = {}
    clients: list[ServerClient] = []
    links: list[ServerLink] = []
    presence = asyncio.Event()

    async def device(invite_text: str, name: str) -> tuple[ServerClient, ServerLink]:
        invite = parse_invite(invite_text, server_url=server_url, fingerprint=fingerprint)
        key = identity.generate_device_key()
        async with ServerClient(invite.server_url, fingerprint=invite.fingerprint) as joiner:
            joined = await joiner.join(invite, key=key, name=name, platform="linux")
        client = ServerClient(
            server_url, fingerprint=fingerprint, device_key=key, device_cert=joined.device_cert
        )
        clients.append(client)
        link = client.connect(lambda online: presence.set(), lambda sender, data: None)
        links.append(link)
        await link.start()
        async with asyncio.timeout(20):
            await link.wait_connected()
        return client, link

    try:
        _, own_link = await device(own_invite, "spare")
        async with asyncio.timeout(20):
            while to not in own_link.online:
                presence.clear()
                await presence.wait()
        ticket = await own_link.open_relay(to, deadline=loop.time() + 10)
        results["own-open"] = "opened"
        other, other_link = await device(other_invite, "intruder")
        attempts = {
            "stolen-ticket": ticket,
            "made-up-token": RelayTicket(
                session=ticket.session,
                token=secrets.token_urlsafe(32),
                peer=to,
                expires_in=ticket.expires_in,
                initiator=False,
            ),
        }
        for name, attempt in attempts.items():
            try:
                stream = await other.relay_stream(attempt, deadline=loop.time() + 10)
            except ServerError as exc:
                results[name] = exc.code
            else:
                results[name] = "joined"
                await stream.close()
        try:
            await other_link.open_relay(to, deadline=loop.time() + 10)
            results["other-open"] = "opened"
        except ServerError as exc:
            results["other-open"] = exc.code
        await own_link.close_relay(ticket.session)
    finally:
        for link in links:
            await link.close()
        for client in clients:
            await client.close()
    return results


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.handoff.rogues rogue|relay-rogue ...`` (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="rogues")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("rogue")
    p.add_argument("--home", type=Path, required=True)
    p.add_argument("--to", required=True)
    p.add_argument("--at", required=True)
    r = sub.add_parser("relay-rogue")
    r.add_argument("--server", required=True)
    r.add_argument("--fingerprint", default=None)
    r.add_argument("--own", required=True)
    r.add_argument("--other", required=True)
    r.add_argument("--to", required=True)
    args = parser.parse_args(argv)
    if args.command == "rogue":
        host, _, port = args.at.rpartition(":")
        results = asyncio.run(rogue(args.home, args.to, host, int(port)))
    else:
        results = asyncio.run(
            relay_rogue(args.server, args.fingerprint, args.own, args.other, args.to)
        )
    print(json.dumps(results, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
