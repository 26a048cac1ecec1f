"""A discovery peer in its own process: prints one JSON line per event, runs until killed."""

from __future__ import annotations

import argparse
import asyncio
import json

from handoffd.discovery.browse import DiscoveryEvent
from handoffd.discovery.liveness import LivenessPolicy
from handoffd.discovery.mdns import Discovery

# Fast liveness for tests: a dead peer is gone within about 3 s.
FAST = LivenessPolicy(
    stale_after=1.0, check_timeout=0.5, retry_after=0.3, misses_for_gone=3, lost_recheck=0.5
)


async def main(args: argparse.Namespace) -> None:
    def show(ev: DiscoveryEvent) -> None:
        out = {
            "kind": ev.kind,
            "device": ev.peer.device_id,
            "port": ev.peer.port,
            "addresses": list(ev.peer.addresses),
            "via": ev.peer.via,
        }
        print(json.dumps(out), flush=True)

    known = frozenset(args.known.split(","))
    d = Discovery(
        device_id=args.device,
        port=args.port,
        marker_key=bytes.fromhex(args.key),
        known_devices=lambda: known,
        on_change=show,
        interfaces=args.interface or None,
        unicast_peers=args.unicast,
        liveness=FAST,
        interface_poll=args.interface_poll,
    )
    await d.start()
    print(json.dumps({"kind": "started", "instance": d.instance}), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await d.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("device")
    parser.add_argument("port", type=int)
    parser.add_argument("key")
    parser.add_argument("known")
    parser.add_argument("--interface", action="append", default=[])
    parser.add_argument("--unicast", action="append", default=[])
    parser.add_argument("--interface-poll", type=float, default=1.0)
    asyncio.run(main(parser.parse_args()))
