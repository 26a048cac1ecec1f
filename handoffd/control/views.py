"""How the control API shows items, sessions, the status and devices (JSON views)."""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from typing import Any

from handoffd import identity
from handoffd.control.context import ControlContext
from handoffd.devicestate import platform_name
from handoffd.items import Item
from handoffd.store import DeviceRecord as CachedDevice
from handoffd.store import SessionRecord


def item_json(item: Item, *, content: bool, available: bool | None = None) -> dict[str, Any]:
    """An item as the API shows it (content only in single-session views)."""
    out: dict[str, Any] = {
        "type": item.type,
        "name": item.name,
        "mime": item.mime,
        "size": item.size,
        "source": item.source,
    }
    if item.path is not None:
        out["path"] = item.path
    if available is not None:
        out["available"] = available
    if content and item.text is not None:
        out["text"] = item.text
    if content and item.data is not None:
        out["data_base64"] = _b64(item.data)
    return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def session_json(
    rec: SessionRecord, *, content: bool = False, available: Sequence[bool] | None = None
) -> dict[str, Any]:
    """A session as the API shows it."""
    return {
        "id": rec.id,
        "app_id": rec.app_id,
        "title": rec.title,
        "context": rec.context,
        "items": [
            item_json(i, content=content, available=None if available is None else available[n])
            for n, i in enumerate(rec.items)
        ],
        "state": rec.state,
        "created_at": rec.created_at,
        "updated_at": rec.updated_at,
    }


def status_json(ctx: ControlContext) -> dict[str, Any]:
    """``GET /v1/status``."""
    device = ctx.device
    not_after = device.cert_not_after
    return {
        "device_id": device.device_id,
        "device_id_display": identity.format_device_id(device.device_id),
        "device_name": ctx.settings.current.device_name,
        "paired": device.paired,
        "account_id": device.account_id,
        "account_name": None if device.server is None else device.server.account_name,
        "server_url": None if device.server is None else device.server.url,
        "server_reachable": device.server_reachable,
        "handoff_enabled": ctx.settings.current.handoff_enabled,
        "cert_not_after": None if not_after is None else not_after.timestamp(),
        "crl_number": 0 if device.trust is None else device.trust.crl_number,
        "revoked": device.revoked,
        "server_connected": ctx.server_online is not None,
        "refused": list(ctx.refusals),
        "version": ctx.version,
        "pid": os.getpid(),
    }


def device_json(ctx: ControlContext, d: CachedDevice) -> dict[str, Any]:
    """A device of the account as the API shows it (nearby and online from this device's view)."""
    addresses = ctx.nearby.get(d.device_id, ())
    return {
        "device_id": d.device_id,
        "name": d.name,
        "platform": d.platform,
        "self": d.device_id == ctx.device.device_id,
        "nearby": bool(addresses),
        "online": d.online if ctx.server_online is None else d.device_id in ctx.server_online,
        "addresses": list(addresses),
        "last_seen": d.last_seen,
        "revoked": d.revoked,
    }


def self_device(ctx: ControlContext) -> CachedDevice:
    """This device as a device-cache record (listed even before the server's list is cached)."""
    return CachedDevice(
        device_id=ctx.device.device_id,
        name=ctx.settings.current.device_name,
        platform=platform_name(),
        revoked=ctx.device.revoked,
        online=None,
        last_seen=None,
        created_at=None,
        updated_at=0.0,
    )


# ---------------------------------------------------------------- handlers
