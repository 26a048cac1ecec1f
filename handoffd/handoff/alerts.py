"""Notifications where a person expects one: a session received, a handoff resumed on the
target, a handoff that failed or was declined (with the reason), a new device paired into
the account (pairing goes through the server's invites: the account's other devices hear of
it; a person who did not pair it revokes it). Driven by the engine's own
events; shown through ``Desktop`` (best effort, the setting ``notifications``)."""

from __future__ import annotations

import logging
from typing import Any

from handoffd.errors import HandoffError
from handoffd.events import EventBus
from handoffd.handoff.consent import APP_LABELS
from handoffd.handoff.desktop import Desktop
from handoffd.handoff.records import Records

logger = logging.getLogger("handoffd.handoff.alerts")


class Alerts:
    """Turns engine events into desktop notifications."""

    def __init__(self, events: EventBus, desktop: Desktop, records: Records) -> None:
        self.events = events
        self.desktop = desktop
        self.records = records

    async def loop(self) -> None:
        """Until cancelled: one notification per event that calls for one."""
        sub = self.events.subscribe()
        try:
            async for event in sub:
                message = await self._message(event)
                if message is not None:
                    await self.desktop.show(*message)
        finally:
            sub.close()

    async def _peer(self, handoff_id: str) -> str:
        try:
            h = await self.records.get_json(handoff_id)
        except HandoffError:
            return "the other device"
        peer = h.get("peer") or {}
        return str(peer.get("name") or str(peer.get("device_id", ""))[:8] or "the other device")

    async def _message(self, event: dict[str, Any]) -> tuple[str, str] | None:
        kind = event.get("type")
        hid = str(event.get("handoff_id", ""))
        if kind == "handoff.received":
            sender = event.get("from") or {}
            who = sender.get("name") or str(sender.get("device_id", ""))[:8]
            app = str(event.get("app_id", ""))
            what = APP_LABELS.get(app, app)
            return (f"Received from {who}", f"“{event.get('title', '')}” ({what})")
        if kind == "device.joined":
            name = str(event.get("name", ""))
            return (
                "New device in your account",
                (
                    f"{name} ({event.get('platform', '')}) was paired. Not you? "
                    f"Revoke it: handoff revoke '{name}'"
                ),
            )
        if kind == "handoff.resumed" and event.get("direction") == "out":
            return ("Handoff resumed", f"resumed on {await self._peer(hid)}")
        if kind == "handoff.state" and event.get("state") in ("failed", "declined"):
            error = event.get("error") or {}
            reason = error.get("message") or error.get("code") or "no reason given"
            if event.get("direction") == "out":
                return (f"Handoff {event['state']}", f"to {await self._peer(hid)}: {reason}")
            if event.get("state") == "failed":
                return ("Handoff failed", f"from {await self._peer(hid)}: {reason}")
        return None
