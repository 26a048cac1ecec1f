"""Desktop notifications (``desktop-notifier``: D-Bus ``org.freedesktop.Notifications`` on
Linux, the notification centre on macOS), with buttons for a question. Best effort: no
notification server (no session bus, nothing owning the name) is logged once and nothing
else happens; the setting ``notifications`` turns them off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from handoffd.config import SettingsFile

logger = logging.getLogger("handoffd.handoff.desktop")

APP_NAME = "Handoff"
SEND_TIMEOUT = 10.0

Action = tuple[str, Callable[[], None]]
"""A button: its label and what pressing it does."""


class Desktop:
    """Shows notifications; ``show`` never raises (but for cancellation)."""

    def __init__(self, settings: SettingsFile) -> None:
        self.settings = settings
        self._notifier: Any = None
        self._warned = False
        # The library logs every failure with its traceback; one line of ours is enough.
        logging.getLogger("desktop_notifier").setLevel(logging.CRITICAL)

    def _get(self) -> Any:
        if self._notifier is None:
            from desktop_notifier import DesktopNotifier  # the backend is picked at import

            self._notifier = DesktopNotifier(app_name=APP_NAME)
        return self._notifier

    async def show(
        self,
        title: str,
        message: str,
        actions: Sequence[Action] = (),
        *,
        shown_for: float = -1,
    ) -> bool:
        """Show a notification; True if a notification server took it."""
        if not self.settings.current.notifications:
            return False
        dispatched: list[bool] = []
        problem = "no notification server"
        try:
            from desktop_notifier import Button

            buttons = [Button(title=label, on_pressed=press) for label, press in actions]
            async with asyncio.timeout(SEND_TIMEOUT):
                await self._get().send(
                    title=title,
                    message=message,
                    buttons=buttons,
                    timeout=int(shown_for),
                    on_dispatched=lambda: dispatched.append(True),
                )
        except Exception as exc:  # noqa: BLE001 - any backend failure: no notification, logged once
            problem = type(exc).__name__
            self._notifier = None  # a server may come later: try afresh next time
        if dispatched:
            return True
        if not self._warned:
            self._warned = True
            logger.warning("desktop notifications unavailable: %s", problem)
        return False
