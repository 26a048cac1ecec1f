"""The target is killed (SIGKILL) mid-transfer and restarted: the handoff completes and no
acknowledged byte is sent twice. Also the 50 MiB document arrives intact."""

from __future__ import annotations

from typing import Any

import pytest

from handoffd.control.client import Item
from tests.handoff.helpers import (
    checkpoints,
    paired_daemons,
    sha256_file,
    wait_state,
    write_random,
)
from tests.support.waiting import wait_for

SIZE = 50 * 1024 * 1024


@pytest.mark.slow
@pytest.mark.timeout(300)  # 50 MiB over the data channel twice over on a busy machine
@pytest.mark.asyncio
async def test_target_killed_mid_transfer_resumes_without_resending() -> None:
    # On the data channel only: the record's ``wire`` describes the last exchange, and a move
    # onto the LAN lane would start another one (the lane's own fault test is in the lab).
    with paired_daemons(env_b={"HANDOFF_LANE_MIN_BYTES": "-1"}) as pair:
        doc = pair.root / "big.bin"
        digest = write_random(doc, SIZE)
        async with pair.client(pair.a) as a:
            session = await a.publish(
                "org.example.big", "big", items=[Item.of_path("document", "big.bin", doc)]
            )
            h = await a.send(session.id, "desk")

            async def acked() -> int | None:
                x: dict[str, Any] = await a.request("GET", f"/v1/handoffs/{h.id}")
                return int(x["bytes_done"]) if x["bytes_done"] >= 8 * 1024 * 1024 else None

            acked_before = await wait_for(acked, what="8 MiB acknowledged")
            assert acked_before < SIZE
            pair.b.kill()
            held = checkpoints(pair.b, h.id)
            durable = sum(held.values())
            # The source only ever saw acknowledgements of what the target made durable.
            assert acked_before <= durable < SIZE
            pair.b.start()

            done = await wait_state(a, h.id, {"delivered", "failed", "declined"}, within=240)
            assert done["state"] == "delivered", done
            assert done["attempts"] >= 2
            wire = done["wire"]
            # The last attempt resumed from exactly what the target held durably ...
            assert wire["bytes_already_held"] == durable
            # ... and sent only the rest: nothing acknowledged crossed the wire again.
            assert wire["data_bytes_sent"] == SIZE - durable
            assert done["bytes_done"] == done["bytes_total"] == SIZE

        async with pair.client(pair.b) as b:
            entry = await b.inbox_entry(h.id)
            item = entry.items[0]
            assert item.sha256 == digest
            assert sha256_file(pair.b.paths.inbox / h.id / "big.bin") == digest
            assert not (pair.b.paths.partial / h.id).exists()
            assert checkpoints(pair.b, h.id) == {}
