"""The SDK's methods of everyday handoff (``HandoffClient`` inherits them): send content in one
call, answer the open questions of consent, open or discard an inbox entry, unpair."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from handoffd.control.answers import Handoff, InboxEntry
from handoffd.control.client_transport import ControlTransport
from handoffd.control.everyday_models import Asking, AskingList, Unpaired

__all__ = ["Asking", "EverydayCalls", "Unpaired"]


class EverydayCalls(ControlTransport):
    """``send_content``, ``asking``/``accept``/``decline``, ``open_entry``/``discard``, ``unpair``."""

    async def send_content(
        self,
        target: str,
        *,
        paths: Sequence[str] | None = None,
        text: str | None = None,
        url: str | None = None,
        clipboard: str | None = None,
    ) -> Handoff:
        """Hand files and folders (absolute ``paths``), a ``text``, a ``url`` or ``clipboard``
        text to ``target`` in one call: the daemon builds the session (``POST /v1/send``)."""
        given = {"text": text, "url": url, "clipboard": clipboard}
        body: dict[str, Any] = {
            "target": target,
            **{k: v for k, v in given.items() if v is not None},
        }
        if paths is not None:
            body["paths"] = list(paths)
        return await self.request_as(Handoff, "POST", "/v1/send", body)

    async def asking(self) -> list[Asking]:
        """Offers waiting for this device's person to accept or decline them, oldest first."""
        return list((await self.request_as(AskingList, "GET", "/v1/asking")).asking)

    async def accept(self, handoff_id: str) -> Asking:
        """Accept an offer: the transfer starts."""
        return await self.request_as(Asking, "POST", f"/v1/asking/{handoff_id}/accept", {})

    async def decline(self, handoff_id: str) -> Asking:
        """Decline an offer: the sender is told."""
        return await self.request_as(Asking, "POST", f"/v1/asking/{handoff_id}/decline", {})

    async def open_entry(self, handoff_id: str) -> InboxEntry:
        """Hand a received entry to its receiver now (built-in, or its app, launched)."""
        return await self.request_as(InboxEntry, "POST", f"/v1/inbox/{handoff_id}/open", {})

    async def discard(self, handoff_id: str) -> InboxEntry:
        """Delete a received entry and its files."""
        return await self.request_as(InboxEntry, "DELETE", f"/v1/inbox/{handoff_id}")

    async def unpair(self) -> Unpaired:
        """Forget the account (revoked at the server first when it can be reached)."""
        return await self.request_as(Unpaired, "POST", "/v1/unpair", {})
