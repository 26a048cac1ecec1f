"""Consent on the receiver: the policy for an offer (``ask`` / ``accept`` / ``decline``, per app
and per sending device, see ``config.Settings``), decided before any byte of the session moves.

``ask`` keeps the offer waiting (the sender's driver waits for the answer) while a desktop
notification with Accept / Decline names the sending device, the app, the title and the size;
``handoff accept|decline ID`` and ``POST /v1/asking/{id}/accept|decline`` answer it too. No
answer within ``consent_timeout`` seconds declines it (``consent-timeout``), and the sender is
told why. A question lives in memory with its offer: after a restart the sender's retry asks
again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from handoffd.config import SettingsFile, rule_for
from handoffd.errors import NotFoundError
from handoffd.events import EventBus
from handoffd.handoff import sendables
from handoffd.handoff.desktop import Desktop
from handoffd.handoff.timings import Clock
from handoffd.proto import messages as m

logger = logging.getLogger("handoffd.handoff.consent")

POLL = 0.5
MAX_ASKING = 32
"""Open questions at most: more offers that would ask are declined (``consent-busy``)."""
APP_LABELS = {
    sendables.APP_FILES: "files",
    sendables.APP_TEXT: "text",
    sendables.APP_URL: "a link",
    sendables.APP_CLIPBOARD: "clipboard text",
}


def size_text(n: float) -> str:
    """``217.4 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


@dataclass
class Asking:
    """An offer waiting for its person's answer."""

    handoff_id: str
    app_id: str
    title: str
    from_device: str
    from_name: str
    items: int
    size: int
    asked_at: float
    deadline: float
    answer: asyncio.Future[bool] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        """As ``GET /v1/asking`` shows it."""
        return {
            "id": self.handoff_id,
            "app_id": self.app_id,
            "title": self.title,
            "from": {"device_id": self.from_device, "name": self.from_name},
            "items": self.items,
            "size": self.size,
            "state": "asking",
            "asked_at": self.asked_at,
            "deadline": self.deadline,
        }

    def question(self) -> tuple[str, str]:
        """The notification's title and text."""
        who = self.from_name or self.from_device[:8]
        what = APP_LABELS.get(self.app_id, self.app_id)
        noun = "item" if self.items == 1 else "items"
        return (
            f"{who} wants to hand you {what}",
            f"“{self.title}” — {what} ({self.app_id}), {self.items} {noun}, {size_text(self.size)}",
        )


class Consent:
    """The receiver's consent policy and its open questions."""

    def __init__(
        self,
        settings: SettingsFile,
        desktop: Desktop,
        events: EventBus,
        clock: Clock,
        spawn: Callable[[Coroutine[Any, Any, Any], str], object],
    ) -> None:
        self.spawn = spawn
        self.settings = settings
        self.desktop = desktop
        self.events = events
        self.clock = clock
        self.asking: dict[str, Asking] = {}

    def policy(self, app_id: str, device_id: str, device_name: str) -> str:
        """``ask``, ``accept`` or ``decline`` for an offer of ``app_id`` from the device."""
        s = self.settings.current
        by_app = rule_for(s.consent_apps, app_id)
        if by_app is not None:
            return by_app
        names = (device_id, device_name) if device_name else (device_id,)
        by_device = rule_for(s.consent_devices, *names)
        if by_device is not None:
            return by_device
        return s.consent_builtin if app_id in sendables.BUILTIN_APPS else "accept"

    async def check(
        self, manifest: m.Manifest, peer: str, peer_name: str, closed: Callable[[], bool]
    ) -> tuple[str, str] | None:
        """None to go on; (reason, message) to decline. ``closed`` says the offer's link is gone
        (the question stays for the sender's next try)."""
        me = self.settings.current.device_name
        policy = self.policy(manifest.app_id, peer, peer_name)
        if policy == "accept":
            return None
        if policy == "decline":
            return ("declined-by-policy", f"{me} does not take this from this device")
        asking = self.asking.get(manifest.handoff_id)
        if asking is None:
            if len(self.asking) >= MAX_ASKING:
                return ("consent-busy", f"too many offers wait for an answer on {me}")
            asking = self._ask(manifest, peer, peer_name)
        while not asking.answer.done():
            if self.clock.wall() >= asking.deadline:
                self._forget(asking, "timeout")
                seconds = self.settings.current.consent_timeout
                return ("consent-timeout", f"nobody answered on {me} within {seconds} s")
            if closed():
                return ("connection-lost", "the offer's connection closed")
            await asyncio.wait([asking.answer], timeout=POLL)
        accepted = asking.answer.result()
        self.asking.pop(asking.handoff_id, None)
        return None if accepted else ("declined-by-user", f"declined on {me}")

    def _ask(self, manifest: m.Manifest, peer: str, peer_name: str) -> Asking:
        now = self.clock.wall()
        asking = Asking(
            handoff_id=manifest.handoff_id,
            app_id=manifest.app_id,
            title=manifest.title,
            from_device=peer,
            from_name=peer_name,
            items=len(manifest.items),
            size=sum(i.size for i in manifest.items),
            asked_at=now,
            deadline=now + self.settings.current.consent_timeout,
            answer=asyncio.get_running_loop().create_future(),
        )
        self.asking[asking.handoff_id] = asking
        self.events.publish({"type": "handoff.asking", **asking.to_json()})
        logger.info("asking for consent", extra={"handoff": asking.handoff_id})
        title, text = asking.question()
        hid = asking.handoff_id
        actions = [
            ("Accept", lambda: self._press(hid, accept=True)),
            ("Decline", lambda: self._press(hid, accept=False)),
        ]
        timeout = self.settings.current.consent_timeout
        self.spawn(
            self.desktop.show(title, text, actions, shown_for=timeout), "consent-notification"
        )
        return asking

    def _press(self, handoff_id: str, *, accept: bool) -> None:
        try:
            self.answer(handoff_id, accept=accept)
        except NotFoundError:
            logger.info("an answer for a question no longer open", extra={"handoff": handoff_id})

    def answer(self, handoff_id: str, *, accept: bool) -> Asking:
        """Answer an open question (NotFoundError(asking-not-found) if none)."""
        asking = self.asking.get(handoff_id)
        if asking is None or asking.answer.done():
            raise NotFoundError("no such question waiting for an answer", code="asking-not-found")
        asking.answer.set_result(accept)
        self.events.publish(
            {"type": "handoff.answered", "handoff_id": handoff_id, "accepted": accept}
        )
        logger.info("consent answered accepted=%s", accept, extra={"handoff": handoff_id})
        return asking

    def _forget(self, asking: Asking, why: str) -> None:
        self.asking.pop(asking.handoff_id, None)
        if not asking.answer.done():
            asking.answer.cancel()
        self.events.publish(
            {
                "type": "handoff.answered",
                "handoff_id": asking.handoff_id,
                "accepted": False,
                "why": why,
            }
        )

    def open_questions(self) -> list[Asking]:
        """Offers waiting for an answer, oldest first."""
        return sorted(self.asking.values(), key=lambda a: a.asked_at)
