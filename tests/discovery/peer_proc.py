"""A discovery peer in its own process: prints one JSON line per event, runs until killed."""

from __future__ import annotations

import asyncio
import json
import sys

from handoffd.discovery.mdns import Discovery, DiscoveryEvent


async def main(device_id: str, port: int, key: str, known: list[str], unicast: list[str]) -> None:
    def show(ev: DiscoveryEvent) -> None:
        out = {"kind": ev.kind, "device": ev.peer.device_id, "port": ev.peer.port}
        print(json.dumps(out), flush=True)

    d = Discovery(
        device_id=device_id,
        port=port,
        marker_key=bytes.fromhex(key),
        known_devices=lambda: frozenset(known),
        on_change=show,
        unicast_peers=unicast,
        liveness_interval=1.0,
    )
    await d.start()
    print(json.dumps({"kind": "started"}), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await d.close()


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(
        main(args[0], int(args[1]), args[2], args[3].split(","), [u for u in args[4:] if u])
    )
