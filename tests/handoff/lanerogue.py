"""Clients that try the desk's LAN lane the wrong way, run inside a lab host by the tests::

    python -m tests.handoff.lanerogue tls   --home HOME --to DEVICE --at HOST:PORT --trust DESK_HOME
    python -m tests.handoff.lanerogue plain --to DEVICE --at HOST:PORT --trust DESK_HOME
    python -m tests.handoff.lanerogue reuse --home HOME --to DEVICE --at HOST:PORT --trust DESK_HOME \
        --signal HOST:PORT

``tls``: the device in HOME (another account's, or a revoked one) dials the lane with a
made-up token, trusting the desk's account CA (public) so that the desk is the one to judge.
``plain``: a TCP client that never speaks TLS; it reports whether the desk closed it without
sending a byte. ``reuse``: a device of the account (HOME) gets a genuine token from the desk
in a real exchange (WebRTC through the desk's signaling port, a signed offer of a 9 MiB
item, the desk's ``lane`` message), opens the lane with it, then presents it again.

Each prints one JSON object: ``result`` (the desk's refusal code, ``connected``,
``closed-silent``...) and, for ``reuse``, ``first``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from handoffd import identity
from handoffd.errors import HandoffError
from handoffd.paths import Paths
from handoffd.transport.base import LocalIdentity, PeerRefusedError
from handoffd.transport.lane import LaneDialer, LaneOffer


def _trust(desk_home: Path) -> identity.TrustAnchor:
    ca = identity.load_cert(Paths.resolve(desk_home).account_ca.read_bytes())
    return identity.TrustAnchor.from_ca(ca, None)


def _local(home: Path, trust: identity.TrustAnchor) -> LocalIdentity:
    paths = Paths.resolve(home)
    key = identity.load_private_key(paths.device_key)
    cert = identity.load_cert(paths.device_cert.read_bytes())
    return LocalIdentity(key=key, cert_der=identity.cert_to_der(cert), trust=trust)


async def _dial(local: LocalIdentity, offer: LaneOffer, to: str) -> str:
    loop = asyncio.get_running_loop()
    try:
        channel = await LaneDialer(local, offer).dial(to, deadline=loop.time() + 15)
    except PeerRefusedError as exc:
        return exc.peer_code
    except HandoffError as exc:
        return f"local:{exc.code}"
    await channel.close()
    return "connected"


async def plain(host: str, port: int) -> dict[str, str]:
    reader, writer = await asyncio.open_connection(host, port)
    started = time.monotonic()
    try:
        data = await asyncio.wait_for(reader.read(), 60)
    except ConnectionError:
        data = b"reset"
    finally:
        writer.close()
    took = f"{time.monotonic() - started:.1f}"
    return {"result": "closed-silent" if data == b"" else "sent-something", "after_s": took}


async def reuse(
    local: LocalIdentity, to: str, host: str, port: int, sig_host: str, sig_port: int
) -> dict[str, str]:
    from handoffd.handoff.link import make_hello
    from handoffd.handoff.offer import build_manifest, new_handoff_id, sign_offer
    from handoffd.items import Item
    from handoffd.proto import codec
    from handoffd.proto import transfer as core
    from handoffd.transport import webrtc
    from handoffd.transport.signaling import send_offer

    async def signal(offer: bytes) -> bytes:
        return await send_offer(
            sig_host, sig_port, offer, local=local, peer_device_id=to, timeout=10
        )

    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory() as tmp:
        doc = Path(tmp) / "nine.bin"
        doc.write_bytes(os.urandom(9 * 1024 * 1024))
        item = Item.of_path("document", "nine.bin", doc)
        item = Item(item.type, item.name, item.mime, item.source, 9 * 1024 * 1024, path=item.path)
        manifest, _ = build_manifest(
            handoff_id=new_handoff_id(), session_id="rogue-session", app_id="org.example.rogue",
            title="rogue", context={}, items=[item], sender=local.device_id, recipient=to,
            now=time.time(),
        )  # fmt: skip
    offer = sign_offer(local.key, local.cert_der, manifest)
    channel = await webrtc.connect(
        local=local, peer_device_id=to, signal=signal, deadline=loop.time() + 20
    )
    try:
        c = core.SenderCore(make_hello(local.device_id, None), offer, manifest, now=loop.time())
        c.start(loop.time())
        lane = None
        async with asyncio.timeout(60):
            while lane is None:
                for msg in c.outgoing():
                    await channel.send(codec.encode(msg))
                for event in c.events():
                    if isinstance(event, core.LaneOffered):
                        lane = event.lane
                    elif isinstance(event, core.Failed | core.Declined):
                        return {"result": f"exchange-{type(event).__name__.lower()}"}
                if lane is None:
                    c.receive_bytes(await channel.recv(), loop.time())
        ticket = LaneOffer(lane.handoff_id, (host,), port, lane.token)
        first = await _dial(local, ticket, to)
        again = await _dial(local, ticket, to)
        c.cancel("rogue", loop.time())
        for msg in c.outgoing():
            await channel.send(codec.encode(msg))
        return {"first": first, "result": again}
    finally:
        await channel.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lanerogue")
    parser.add_argument("case", choices=("tls", "plain", "reuse"))
    parser.add_argument("--home", type=Path)
    parser.add_argument("--to", required=True)
    parser.add_argument("--at", required=True)
    parser.add_argument("--trust", type=Path, required=True)
    parser.add_argument("--signal", default="")
    args = parser.parse_args(argv)
    host, _, port_text = args.at.rpartition(":")
    port = int(port_text)
    if args.case == "plain":
        result = asyncio.run(plain(host, port))
    elif args.case == "tls":
        local = _local(args.home, _trust(args.trust))
        offer = LaneOffer("rogue", (host,), port, os.urandom(16))
        result = {"result": asyncio.run(_dial(local, offer, args.to))}
    else:
        local = _local(args.home, _trust(args.trust))
        sig_host, _, sig_port = args.signal.rpartition(":")
        result = asyncio.run(reuse(local, args.to, host, port, sig_host, int(sig_port)))
    print(json.dumps(result, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
