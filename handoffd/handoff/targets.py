"""Which device a handoff request names: a device id or a name of the account's cache."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

from handoffd import identity
from handoffd.errors import ConflictError, HandoffError, InvalidRequestError, NotFoundError
from handoffd.store import Store


async def resolve_target(
    store: Store,
    target: str,
    *,
    me: str,
    my_name: str,
    refresh: Callable[[], Awaitable[None]],
) -> tuple[str, str]:
    """(device id, name) of a paired, unrevoked device of our account other than us."""
    wanted = target.strip()
    parsed: str | None = None
    with contextlib.suppress(HandoffError):
        parsed = identity.parse_device_id(wanted)
    for attempt in range(2):
        devices = await store.run(store.list_devices)
        exact = [d for d in devices if d.device_id == parsed or d.name == wanted]
        # Names match without regard to case unless one matches exactly.
        match = exact or [d for d in devices if d.name.casefold() == wanted.casefold()]
        # A revoked device may share its name with the one that replaced it.
        match = [d for d in match if not d.revoked] or match
        if match:
            break
        if attempt == 0:
            await refresh()
    else:
        match = []
    itself = InvalidRequestError(
        "cannot hand a session to this device itself", code="target-is-self"
    )
    if (parsed is not None and parsed == me) or (
        not match and wanted.casefold() == my_name.casefold()
    ):
        raise itself
    if len(match) > 1:
        raise ConflictError(
            f"several devices are named {wanted!r} (ignoring case): use the exact name or the "
            "device id (`handoff devices`)",
            code="target-ambiguous",
        )
    if not match:
        if parsed is not None:
            return parsed, ""  # not in the cache (server down): the certificate decides
        raise NotFoundError(f"no device {wanted!r} in this account", code="device-not-found")
    found = match[0]
    if found.device_id == me:
        raise itself
    if found.revoked:
        raise ConflictError("that device is revoked", code="device-revoked")
    return found.device_id, found.name
