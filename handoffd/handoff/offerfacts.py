"""What the receiver reads before deciding an offer, in one hop each (blocking: call through
``Store.run`` or ``asyncio.to_thread``): a small session's answer waits on every hop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from handoffd.handoff import inboxcap
from handoffd.handoff.staging import Staging
from handoffd.handoff.tables import EngineDB, HandoffMeta
from handoffd.store import HandoffRecord, Store


@dataclass(frozen=True, slots=True)
class StoredFacts:
    """The state database's view of an offered handoff."""

    in_inbox: bool
    expired: bool
    inbox_full: bool
    peer_name: str
    record: HandoffRecord | None
    meta: HandoffMeta
    checkpoints: dict[int, int] = field(default_factory=dict)


def stored_facts(
    store: Store, db: EngineDB, handoff_id: str, peer: str, *, inbox_max: int
) -> StoredFacts:
    """Everything the state database says about ``handoff_id`` offered by ``peer``."""
    name = next((d.name for d in store.list_devices() if d.device_id == peer), "")
    return StoredFacts(
        in_inbox=bool(db.inbox(handoff_id)),
        expired=db.is_expired(handoff_id),
        inbox_full=inboxcap.inbox_full(store, inbox_max),
        peer_name=name,
        record=store.get_handoff(handoff_id),
        meta=db.meta(handoff_id),
        checkpoints=db.checkpoints(handoff_id),
    )


@dataclass(frozen=True, slots=True)
class DiskFacts:
    """The receiver's disk: a finished commit of the handoff, free space, bytes held of it."""

    committed: dict[str, Any] | None
    free: int
    held: int


def disk_facts(staging: Staging, handoff_id: str) -> DiskFacts:
    """What the disk says about ``handoff_id``."""
    return DiskFacts(
        committed=staging.committed_manifest(handoff_id),
        free=staging.free_bytes(),
        held=staging.held_bytes(handoff_id),
    )
