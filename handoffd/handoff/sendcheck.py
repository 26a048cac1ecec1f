"""What may be sent: an active session of a paired, unrevoked device, and the item types
asked for (errors are the API's: nothing is sent, the session stays as it is)."""

from __future__ import annotations

from collections.abc import Sequence

from handoffd.errors import ConflictError, InvalidRequestError, NotFoundError
from handoffd.handoff.local import LocalDevice
from handoffd.items import Item
from handoffd.store import SessionRecord, Store


async def sendable_session(store: Store, local: LocalDevice, session_id: str) -> SessionRecord:
    """The active session ``session_id`` of a paired, unrevoked device; else the API error."""
    local.identity()  # not paired: a conflict
    if local.device.revoked:
        raise ConflictError(
            "this device was revoked: it can no longer hand off; run `handoff unpair`, "
            "then pair it again",
            code="device-self-revoked",
        )
    session = await store.run(store.get_session, session_id)
    if session is None:
        raise NotFoundError("no such session", code="session-not-found")
    if session.state != "active":
        raise ConflictError(f"the session is {session.state}", code=f"session-{session.state}")
    return session


def check_types(types: Sequence[str], items: Sequence[Item]) -> list[str]:
    """``types`` if the session has items of each; InvalidRequestError(type-not-in-session)
    naming the session's types otherwise (nothing is sent, the session stays as it is)."""
    have = sorted({i.type for i in items})
    missing = [t for t in types if t not in have]
    if not types or missing:
        what = ", ".join(missing) if missing else "no type"
        raise InvalidRequestError(
            f"the session has no items of type {what} (its types: {', '.join(have) or 'none'})",
            code="type-not-in-session",
        )
    return list(types)
