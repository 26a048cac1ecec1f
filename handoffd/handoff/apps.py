"""Which apps are connected, and launching the registered app for a received session unless
one of its clients is listening (through the rate-limited, coalescing ``Launcher``)."""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Mapping

from handoffd.config import SettingsFile
from handoffd.events import EventBus
from handoffd.handoff.applaunch import AppStarter
from handoffd.handoff.launcher import Launcher, LaunchRequest
from handoffd.handoff.tables import EngineDB, InboxEntry
from handoffd.handoff.timings import Clock
from handoffd.paths import Paths
from handoffd.store import Store
from handoffd.tasks import TaskSet

logger = logging.getLogger("handoffd.handoff.apps")


class Apps:
    """App clients (``GET /v1/events?app_id=``) and app launches."""

    def __init__(
        self,
        *,
        store: Store,
        db: EngineDB,
        settings: SettingsFile,
        events: EventBus,
        paths: Paths,
        environ: Mapping[str, str],
        clock: Clock,
        tasks: TaskSet,
        launch_interval: float,
    ) -> None:
        self.store = store
        self.db = db
        self.settings = settings
        self.events = events
        self.paths = paths
        self.environ = environ
        self.clients: collections.Counter[str] = collections.Counter()
        """Connected event-stream clients per app id (the control API counts them)."""
        self.launcher = Launcher(
            tasks.spawn,
            still_wanted=self._still_wanted,
            on_failed=self._failed,
            interval=launch_interval,
            clock=clock.mono,
            starter=AppStarter.from_env(environ),
        )

    async def received(self, entry: InboxEntry) -> bool:
        """Launch the registered app for ``entry`` unless one of its clients is connected;
        False if no app will resume it (none registered, or ``auto_accept`` off)."""
        if self.clients[entry.app_id] > 0:
            logger.info("app connected; not launching", extra={"app": entry.app_id})
            return True
        if not self.settings.current.auto_accept:
            return False
        return await self.launch(entry)

    async def launch(self, entry: InboxEntry) -> bool:
        """Launch the registered app for ``entry`` (False if none is registered)."""
        app = await self.store.run(self.store.get_app, entry.app_id)
        if app is None:
            return False
        paths = self.paths
        has_home = (
            paths.config_dir == paths.data_dir and paths.runtime_dir == paths.data_dir / "run"
        )
        env = {
            **self.environ,
            "HANDOFF_ID": entry.id,
            "HANDOFF_HOME": os.fspath(paths.data_dir) if has_home else "",
        }
        await self.launcher.launch(entry.app_id, entry.id, app.launch, env)
        return True

    async def _still_wanted(self, req: LaunchRequest) -> bool:
        """A deferred launch still makes sense: auto_accept, no client, the entry unresumed."""
        if not self.settings.current.auto_accept or self.clients[req.app_id] > 0:
            return False
        entries = await self.store.run(self.db.inbox, req.handoff_id, states=("received",))
        return bool(entries)

    def _failed(self, req: LaunchRequest) -> None:
        self.events.publish(
            {"type": "handoff.launch_failed", "handoff_id": req.handoff_id, "app_id": req.app_id}
        )
