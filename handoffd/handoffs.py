"""The handoff service: source and receiver orchestration around ``handoffd.transfer``.

Plugged into the daemon as an ``Extension`` (``extension()``): it adds the
``/v1/handoffs`` and ``/v1/inbox`` routes and runs, in its own TaskGroup,

- the LAN signaling server (``HANDOFF_SIGNALING_PORT``, default ephemeral):
  WebRTC offers become incoming links; envelopes of purpose
  ``handoff-resumed`` are resume notices, answered with ``handoff-resumed-ack``;
- discovery (mDNS advertise/browse with the signaling port) once paired;
- one task per outgoing handoff (connect, run the sender, bounded exponential
  backoff with jitter, cancel at any moment);
- the receivers (one per incoming exchange), the app launcher (tracked
  children, reaped), the expiry sweep, the resume-notice retries and the
  warm-link janitor.

State lives in ``state.db``: the daemon's ``handoffs`` table plus this
module's own ``engine_*`` tables (created here, ``IF NOT EXISTS``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import os
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from handoffd import envelope, identity, inboxcap, peering
from handoffd.control.server import ControlContext, cache_records
from handoffd.errors import (
    ApiError,
    EnvelopeError,
    HandoffError,
    ProtocolError,
    StoreError,
    TransportError,
)
from handoffd.launcher import Launcher, LaunchRequest
from handoffd.peering import DirectDialer, ServerPath
from handoffd.policy import decide
from handoffd.proto import codec
from handoffd.proto import messages as m
from handoffd.proto import transfer as core
from handoffd.refusals import RefusalLog
from handoffd.reservations import Reservations, capped
from handoffd.store import HandoffRecord, ItemRecord, Store
from handoffd.transfer import (
    ItemSpec,
    Link,
    PathSwitchError,
    ReceiverHooks,
    SenderHooks,
    SendReport,
    SourceItem,
    Staging,
    TransferError,
    Verdict,
    build_manifest,
    check_handoff_id,
    make_hello,
    manifest_context,
    new_handoff_id,
    open_offer,
    run_receiver,
    run_sender,
    sign_offer,
    unique_names,
)
from handoffd.transport.base import PATH_RELAY, PeerAuthError, PeerRefusedError
from handoffd.transport.connector import Connector, NoPathError, Upgrader

logger = logging.getLogger("handoffd.handoffs")

PURPOSE_RESUMED = "handoff-resumed"
PURPOSE_RESUMED_ACK = "handoff-resumed-ack"
SIGNALING_PORT_ENV = "HANDOFF_SIGNALING_PORT"
MAX_ATTEMPTS = int(os.environ.get("HANDOFF_MAX_ATTEMPTS", "8"))
"""Connection attempts of one handoff before it fails (a refusal fails it at once)."""
BACKOFF_BASE = float(os.environ.get("HANDOFF_BACKOFF_BASE", "1"))
BACKOFF_MAX = float(os.environ.get("HANDOFF_BACKOFF_MAX", "60"))
"""Retry n waits base * 2**(n-1) seconds, capped at the max, jittered in its upper half."""
CONNECT_TIMEOUT = 15.0
RESUMED_WAIT = 30.0
WARM_IDLE = float(os.environ.get("HANDOFF_WARM_IDLE", "60"))
"""Seconds an idle link to a peer is kept for the next handoff (0: never reuse)."""
FRESH_LINK_GRACE = 30.0
"""Seconds a new link that has carried no exchange yet (an incoming one before the peer's hello,
an outgoing one before its sender begins) is kept whatever WARM_IDLE says."""
WARM_PROBE_TIMEOUT = 2.0
"""Seconds an idle warm link gets to answer a ping before it is reused (else a new one)."""
PROGRESS_INTERVAL = 0.1
SWEEP_INTERVAL = 30.0
NOTICE_TIMEOUT = 10.0
NOTICE_MAX_DELAY = 300.0
NOTICE_STORE_RETRY = 30.0
"""Seconds before resume notices are tried again after the state database failed."""
SHUTDOWN_LINKS = 6.0
"""Seconds at most to close every link at shutdown."""
NOTICE_AFTER_LINK = 5.0
"""Seconds after telling the source over a link before the confirming notice."""
DEVICE_REFRESH = 60.0
DISCOVERY_GRACE = 5.0
HEAD_START = float(os.environ.get("HANDOFF_DIRECT_HEAD_START", "1.75"))
"""Seconds the direct path gets before the relay is tried too."""
UPGRADE_FIRST = float(os.environ.get("HANDOFF_UPGRADE_FIRST", "5"))
UPGRADE_EVERY = float(os.environ.get("HANDOFF_UPGRADE_EVERY", "15"))
"""While relayed: the first try of the direct path after this many seconds, then every ..."""

OUT_ACTIVE = ("pending", "connecting", "transferring", "retrying")
TERMINAL = ("resumed", "declined", "cancelled", "failed")

SCHEMA = """
CREATE TABLE IF NOT EXISTS engine_handoffs (
    id TEXT PRIMARY KEY,
    peer_name TEXT NOT NULL DEFAULT '',
    next_retry_at REAL,
    offer BLOB,
    data_bytes INTEGER NOT NULL DEFAULT 0,
    channel_bytes INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS engine_checkpoints (
    handoff_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    PRIMARY KEY (handoff_id, idx)
);
CREATE TABLE IF NOT EXISTS engine_inbox (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    title TEXT NOT NULL,
    context TEXT NOT NULL,
    from_device TEXT NOT NULL,
    from_name TEXT NOT NULL,
    items TEXT NOT NULL,
    state TEXT NOT NULL,
    received_at REAL NOT NULL,
    resumed_at REAL
);
CREATE TABLE IF NOT EXISTS engine_expired (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    expired_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS engine_notices (
    handoff_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    created_at REAL NOT NULL
)
"""


# ---------------------------------------------------------------- the engine's tables


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """A received session."""

    id: str
    session_id: str
    app_id: str
    title: str
    context: dict[str, Any]
    from_device: str
    from_name: str
    items: tuple[dict[str, Any], ...]
    state: str
    received_at: float
    resumed_at: float | None

    def to_json(self) -> dict[str, Any]:
        """As ``GET /v1/inbox/{id}`` shows it."""
        return {
            "id": self.id,
            "session_id": self.session_id,
            "app_id": self.app_id,
            "title": self.title,
            "context": self.context,
            "from": {"device_id": self.from_device, "name": self.from_name},
            "items": list(self.items),
            "state": self.state,
            "received_at": self.received_at,
            "resumed_at": self.resumed_at,
        }


@dataclass(frozen=True, slots=True)
class HandoffMeta:
    """The engine's extra columns of a handoff."""

    peer_name: str = ""
    next_retry_at: float | None = None
    offer: bytes | None = None
    data_bytes: int = 0
    channel_bytes: int = 0
    skipped: int = 0


_META_FIELDS = frozenset(
    {"peer_name", "next_retry_at", "offer", "data_bytes", "channel_bytes", "skipped"}
)


class EngineDB:
    """The engine's tables in ``state.db``; blocking: call through ``store.run``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _exec(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self.store.transaction() as db:
            return db.execute(sql, tuple(args)).fetchall()

    def migrate(self) -> None:
        """Create the tables if missing."""
        with self.store.transaction() as db:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    # -- handoff meta

    def meta(self, handoff_id: str) -> HandoffMeta:
        """The extra columns (defaults if none)."""
        rows = self._exec(
            "SELECT peer_name, next_retry_at, offer, data_bytes, channel_bytes, skipped"
            " FROM engine_handoffs WHERE id = ?",
            (handoff_id,),
        )
        if not rows:
            return HandoffMeta()
        r = rows[0]
        return HandoffMeta(r[0], r[1], None if r[2] is None else bytes(r[2]), r[3], r[4], r[5])

    def all_meta(self) -> dict[str, HandoffMeta]:
        """Every handoff's extra columns, without offers."""
        rows = self._exec(
            "SELECT id, peer_name, next_retry_at, NULL, data_bytes, channel_bytes, skipped"
            " FROM engine_handoffs"
        )
        return {r[0]: HandoffMeta(r[1], r[2], None, r[4], r[5], r[6]) for r in rows}

    def set_meta(self, handoff_id: str, **fields: Any) -> None:
        """Set some extra columns."""
        unknown = set(fields) - _META_FIELDS
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        with self.store.transaction() as db:
            db.execute("INSERT OR IGNORE INTO engine_handoffs (id) VALUES (?)", (handoff_id,))
            if fields:
                sets = ", ".join(f"{k} = ?" for k in fields)
                db.execute(
                    f"UPDATE engine_handoffs SET {sets} WHERE id = ?",  # noqa: S608 - names checked
                    (*fields.values(), handoff_id),
                )

    def update(self, handoff_id: str, meta: Mapping[str, Any], **fields: Any) -> HandoffRecord:
        """Update the daemon's handoff row (``fields``) and the extra columns (``meta``) at once."""
        if meta:
            self.set_meta(handoff_id, **meta)
        return self.store.update_handoff(handoff_id, **fields)

    def progress(self, handoff_id: str, done: int) -> None:
        """Raise ``bytes_done`` of a transferring handoff (one statement: never after delivered)."""
        self._exec(
            "UPDATE handoffs SET bytes_done = ?, updated_at = ?"
            " WHERE id = ? AND state = 'transferring' AND bytes_done < ?",
            (done, time.time(), handoff_id, done),
        )

    # -- checkpoints

    def checkpoints(self, handoff_id: str) -> dict[int, int]:
        """Durable offsets per item."""
        rows = self._exec(
            "SELECT idx, offset FROM engine_checkpoints WHERE handoff_id = ?", (handoff_id,)
        )
        return {int(r[0]): int(r[1]) for r in rows}

    def set_checkpoint(self, handoff_id: str, index: int, offset: int) -> None:
        """Record that item ``index`` is durable up to ``offset``."""
        self._exec(
            "INSERT INTO engine_checkpoints (handoff_id, idx, offset) VALUES (?, ?, ?)"
            " ON CONFLICT (handoff_id, idx) DO UPDATE SET offset = excluded.offset",
            (handoff_id, index, offset),
        )

    def clear_checkpoints(self, handoff_id: str) -> None:
        """Forget every checkpoint of a handoff."""
        self._exec("DELETE FROM engine_checkpoints WHERE handoff_id = ?", (handoff_id,))

    # -- inbox

    def add_inbox(self, entry: InboxEntry) -> None:
        """Record a received session (once)."""
        self._exec(
            "INSERT OR IGNORE INTO engine_inbox (id, session_id, app_id, title, context,"
            " from_device, from_name, items, state, received_at, resumed_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry.id,
                entry.session_id,
                entry.app_id,
                entry.title,
                json.dumps(entry.context, ensure_ascii=False),
                entry.from_device,
                entry.from_name,
                json.dumps(list(entry.items), ensure_ascii=False),
                entry.state,
                entry.received_at,
                entry.resumed_at,
            ),
        )

    def inbox(self, entry_id: str | None = None, *, states: Sequence[str] = ()) -> list[InboxEntry]:
        """Inbox entries (newest first), optionally one id and/or some states."""
        sql = (
            "SELECT id, session_id, app_id, title, context, from_device, from_name, items,"
            " state, received_at, resumed_at FROM engine_inbox"
        )
        where: list[str] = []
        args: list[Any] = []
        if entry_id is not None:
            where.append("id = ?")
            args.append(entry_id)
        if states:
            where.append(f"state IN ({', '.join('?' for _ in states)})")
            args.extend(states)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY received_at DESC, id"
        return [
            InboxEntry(
                id=r[0],
                session_id=r[1],
                app_id=r[2],
                title=r[3],
                context=json.loads(r[4]),
                from_device=r[5],
                from_name=r[6],
                items=tuple(json.loads(r[7])),
                state=r[8],
                received_at=r[9],
                resumed_at=r[10],
            )
            for r in self._exec(sql, args)
        ]

    def set_inbox_state(self, entry_id: str, state: str, *, resumed_at: float | None) -> None:
        """Change an entry's state."""
        self._exec(
            "UPDATE engine_inbox SET state = ?, resumed_at = COALESCE(?, resumed_at) WHERE id = ?",
            (state, resumed_at, entry_id),
        )

    # -- expiry tombstones

    def add_expired(self, handoff_id: str, kind: str, now: float) -> None:
        """Remember that ``handoff_id`` expired: it never comes back."""
        self._exec(
            "INSERT OR IGNORE INTO engine_expired (id, kind, expired_at) VALUES (?, ?, ?)",
            (handoff_id, kind, now),
        )

    def is_expired(self, handoff_id: str) -> bool:
        """True if the handoff expired here before."""
        return bool(self._exec("SELECT 1 FROM engine_expired WHERE id = ?", (handoff_id,)))

    # -- pending resume notices

    def add_notice(
        self, handoff_id: str, device_id: str, now: float, *, delay: float = 0.0
    ) -> None:
        """Persist a resume notice to send to ``device_id`` (first try after ``delay``)."""
        self._exec(
            "INSERT OR IGNORE INTO engine_notices (handoff_id, device_id, attempts, next_at,"
            " created_at) VALUES (?, ?, 0, ?, ?)",
            (handoff_id, device_id, now + delay, now),
        )

    def due_notices(self, now: float) -> list[tuple[str, str, int, float]]:
        """(handoff id, device id, attempts, created_at) of notices due now."""
        rows = self._exec(
            "SELECT handoff_id, device_id, attempts, created_at FROM engine_notices"
            " WHERE next_at <= ? ORDER BY next_at",
            (now,),
        )
        return [(r[0], r[1], int(r[2]), float(r[3])) for r in rows]

    def next_notice_at(self) -> float | None:
        """When the next notice is due."""
        rows = self._exec("SELECT MIN(next_at) FROM engine_notices")
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    def notice_retry(self, handoff_id: str, next_at: float) -> None:
        """Count a failed attempt; try again at ``next_at``."""
        self._exec(
            "UPDATE engine_notices SET attempts = attempts + 1, next_at = ? WHERE handoff_id = ?",
            (next_at, handoff_id),
        )

    def notice_done(self, handoff_id: str) -> None:
        """The source was told (or gave up)."""
        self._exec("DELETE FROM engine_notices WHERE handoff_id = ?", (handoff_id,))


# ---------------------------------------------------------------- expiry (testable alone)


def expire(
    store: Store, db: EngineDB, staging: Staging, *, now: float, inbox_ttl: int, partial_ttl: int
) -> list[tuple[str, str]]:
    """Delete unclaimed inbox entries and stale partial transfers; tombstone them. Blocking.

    Returns ``(handoff id, kind)`` of what expired (kind ``inbox`` or ``partial``).
    """
    gone: list[tuple[str, str]] = []
    for entry in db.inbox(states=("received",)):
        if entry.received_at + inbox_ttl <= now:
            staging.discard_inbox(entry.id)
            db.add_expired(entry.id, "inbox", now)
            db.set_inbox_state(entry.id, "expired", resumed_at=None)
            with contextlib.suppress(StoreError):
                store.update_handoff(
                    entry.id,
                    state="failed",
                    error=_error_text("expired", "not resumed before inbox_ttl"),
                )
            gone.append((entry.id, "inbox"))
    by_id = {h.id: h for h in store.list_handoffs(limit=100_000) if h.direction == "in"}
    for handoff_id in staging.partial_ids():
        record = by_id.get(handoff_id)
        if record is not None and record.state in ("delivered", "resumed"):
            staging.discard_partial(handoff_id)
            continue
        last = record.updated_at if record is not None else _mtime(staging.partial_dir(handoff_id))
        if last + partial_ttl <= now:
            staging.discard_partial(handoff_id)
            db.clear_checkpoints(handoff_id)
            db.add_expired(handoff_id, "partial", now)
            if record is not None:
                store.update_handoff(
                    handoff_id,
                    state="failed",
                    error=_error_text("expired", "transfer not finished before partial_ttl"),
                )
            gone.append((handoff_id, "partial"))
    return gone


async def _guarded(coro: Any, name: str) -> Any:
    """Run a task of the engine; a bug in one is logged, never brings the daemon down."""
    try:
        return await coro
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("handoff engine task failed task=%s", name)
        return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _error_text(code: str, message: str, reason: str | None = None) -> str:
    value = {"code": code, "message": message[:500]}
    if reason is not None and reason != code:
        value["reason"] = reason
    return json.dumps(value)


async def _next_event(sub: Any, within: float) -> dict[str, Any] | None:
    """The next event, ``{}`` after ``within`` seconds without one, None once the bus closed."""
    try:
        async with asyncio.timeout(within):
            event: dict[str, Any] | None = await sub.get()
    except TimeoutError:
        return {}
    return event


def _ready_check(upgrader: Upgrader) -> Callable[[], bool]:
    return lambda: upgrader.ready


def _reason(error: HandoffError) -> str | None:
    """The peer's own reason for refusing us, if it gave one."""
    peer_code = getattr(error, "peer_code", None)
    return peer_code if isinstance(peer_code, str) else None


# Refusals that another attempt cannot change (until trust state changes).
_FINAL_REFUSALS = ("cert-", "envelope-", "tls-", "tlsv1-alert-")


def _refusal_is_final(error: HandoffError) -> bool:
    """True for authentication failures, ours or the peer's: retrying would only repeat them."""
    if isinstance(error, PeerAuthError):
        return True
    reason = _reason(error)
    return reason is not None and reason.startswith(_FINAL_REFUSALS)


def _path_error(exc: NoPathError) -> HandoffError:
    """What to report when no path worked: the peer's refusal first, else not found, else the last."""
    for _name, error in exc.attempts:
        if isinstance(error, PeerRefusedError):
            return error
    if exc.attempts and all(e.code == "no-route" for _n, e in exc.attempts):
        return TransportError("the device is not nearby or online", code="peer-not-found")
    real = [e for _n, e in exc.attempts if e.code != "no-route"]
    return real[-1] if real else exc


def _error_json(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return {"code": "error", "message": text}
    if isinstance(value, dict):
        out = {"code": str(value.get("code", "error")), "message": str(value.get("message", ""))}
        if isinstance(value.get("reason"), str):
            out["reason"] = value["reason"]
        return out
    return {"code": "error", "message": text}


def backoff(attempt: int, *, base: float = BACKOFF_BASE, cap: float = BACKOFF_MAX) -> float:
    """Delay before retry ``attempt`` (1-based): exponential, capped, jittered in its upper half."""
    ceiling = min(cap, base * 2.0 ** max(0, attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not secrecy


# ---------------------------------------------------------------- the service


class HandoffService:
    """Handoffs in both directions, the inbox and resumption for one daemon."""

    def __init__(self, ctx: ControlContext) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.db = EngineDB(ctx.store)
        self.staging = Staging(ctx.paths.partial, ctx.paths.inbox)
        self.links: dict[str, list[Link]] = {}
        self.app_clients: collections.Counter[str] = collections.Counter()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._outgoing: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()
        self._receiving: dict[str, asyncio.Task[None]] = {}
        self._progress_at: dict[str, float] = {}
        self.refusals = RefusalLog(ctx.refusals, ctx.events.publish)
        self.reservations = Reservations()
        self.launcher = Launcher(
            self._spawn, still_wanted=self._launch_wanted, on_failed=self._launch_failed
        )
        self._notice_wake = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self._local: Any = None
        self._local_cert: bytes | None = None
        self._replay = envelope.ReplayCache()
        self.signaling: Any = None
        self.discovery: Any = None
        self._discovery_known: frozenset[str] | None = None
        self._discovery_trust: Any = None
        self.sightings: dict[str, tuple[tuple[str, ...], int]] = {}
        self._ready = asyncio.Event()
        self._sighted = asyncio.Event()
        self.server: ServerPath | None = None
        self._connector_cached: Connector | None = None
        self._connector_for: ServerPath | None = None
        self._server_local: Any = None
        self._direct = DirectDialer(
            self._local_identity, self._addresses, lambda: self.server, self._webrtc_options
        )

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Serve until cancelled (the daemon's TaskGroup owns this)."""
        from handoffd.lanlistener import LanListener

        await self.store.run(self.db.migrate)
        await asyncio.to_thread(self.staging.clean_tmp)
        port = int(os.environ.get(SIGNALING_PORT_ENV, "0") or 0)
        # Bound by the discovery loop only while paired with LAN discovery on.
        self.signaling = LanListener("0.0.0.0", port, self._on_signal, local=self._local_identity)  # noqa: S104
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                logger.info("handoff engine ready")
                self._ready.set()
                self._spawn(self._discovery_loop(), "discovery")
                self._spawn(self._server_loop(), "server-link")
                self._spawn(self._sweep_loop(), "expiry")
                self._spawn(self._notice_loop(), "notices")
                self._spawn(self._janitor_loop(), "warm-links")
                await self._restart_outgoing()
                await asyncio.Event().wait()
        finally:
            self._tg = None
            await self._shutdown()

    async def _shutdown(self) -> None:
        # All at once, bounded: each close may wait for the peer's acknowledgement.
        closing = [link.close() for links in self.links.values() for link in links]
        self.links.clear()
        if closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SHUTDOWN_LINKS):
                    await asyncio.gather(*closing, return_exceptions=True)
        if self.discovery is not None:
            with contextlib.suppress(Exception):
                await self.discovery.close()  # goodbye packets: peers forget us at once
            self.discovery = None
        if self.signaling is not None:
            await self.signaling.close()
        # Last: while the engine is being cancelled, closing the server link re-raises that.
        await self._stop_server_path()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        if self._tg is None:
            coro.close()
            raise HandoffError("the handoff engine is not running", code="engine-stopped")
        task = self._tg.create_task(_guarded(coro, name), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def signaling_port(self) -> int | None:
        """The LAN signaling port (None while not listening)."""
        return None if self.signaling is None else self.signaling.port

    # ------------------------------------------------------------ identity

    def _local_identity(self) -> Any:
        """This device's transport identity (rebuilt when the certificate changes)."""
        from handoffd.transport.base import LocalIdentity

        device = self.ctx.device
        if not device.paired or device.cert is None or device.trust is None:
            raise ApiError(
                "this device is not paired: pair it first", code="not-paired", status=409
            )
        cert_der = identity.cert_to_der(device.cert)
        if self._local is None or self._local_cert != cert_der:

            def trust() -> identity.TrustAnchor:
                if device.trust is None:  # pragma: no cover - paired devices keep it
                    raise HandoffError("no trust anchor", code="not-paired")
                return device.trust

            self._local = LocalIdentity(
                key=device.key, cert_der=cert_der, trust=trust, replay=self._replay
            )
            self._local_cert = cert_der
        return self._local

    def _hello(self) -> m.Hello:
        return make_hello(self.ctx.device.device_id, self.ctx.device.trust)

    async def _gossip(self, hello: m.Hello) -> None:
        """Keep the peer's CRL if it is newer and valid."""
        trust = self.ctx.device.trust
        if hello.crl is None or trust is None or hello.crl_number <= trust.crl_number:
            return
        try:
            crl = identity.load_crl(hello.crl)
            if await self.ctx.device.accept_crl(crl):
                logger.info("CRL learned from a peer number=%d", hello.crl_number)
        except HandoffError as exc:
            logger.info("peer CRL refused code=%s", exc.code)

    # ------------------------------------------------------------ discovery

    async def _discovery_loop(self) -> None:
        """Advertise and browse once paired (known devices read live; restarted on new trust)."""
        sub = self.ctx.events.subscribe()
        last_refresh = 0.0
        try:
            while True:
                device = self.ctx.device
                paired = device.paired and device.trust is not None and not device.revoked
                if not (paired and self.ctx.settings.current.lan_discovery):
                    await self._stop_discovery()
                    await self.signaling.close()
                elif await self.signaling.start():
                    if time.monotonic() - last_refresh > DEVICE_REFRESH:
                        await self._refresh_devices()
                        last_refresh = time.monotonic()
                    known = frozenset(
                        d.device_id
                        for d in await self.store.run(self.store.list_devices)
                        if not d.revoked and d.device_id != device.device_id
                    )
                    if known != self._discovery_known:
                        logger.info("known devices changed known=%d", len(known))
                    # Discovery reads the known set live; only new trust needs a restart.
                    self._discovery_known = known
                    if self.discovery is None or device.trust is not self._discovery_trust:
                        await self._start_discovery(known)
                event = await _next_event(sub, 5.0)
                if event is None:
                    return
                kind = event.get("type")
                if kind in ("identity.paired", "identity.crl", "device.revoked"):
                    last_refresh = 0.0
                elif kind == "device.online" and event.get("device_id") not in (
                    self._discovery_known or ()
                ):
                    last_refresh = 0.0  # a device we have not heard of: newly paired
        finally:
            sub.close()

    async def _refresh_devices(self) -> None:
        """Update the device cache from the server (best effort)."""

        try:
            async with asyncio.timeout(5.0):
                records = await self.ctx.device.devices()
        except (HandoffError, TimeoutError) as exc:
            logger.info("device list not refreshed: %s", getattr(exc, "code", "timeout"))
            return
        now = time.time()
        try:
            await self.store.run(self.store.replace_devices, cache_records(records, now))
        except StoreError as exc:  # a full disk: the cache stays as it was, discovery goes on
            logger.warning("device list not stored error=%s", exc.code)

    async def _stop_discovery(self) -> None:
        disc, self.discovery = self.discovery, None
        self._discovery_known = self._discovery_trust = None
        if disc is not None:
            with contextlib.suppress(Exception):
                await disc.close()
            for device_id in list(self.sightings):
                self.sightings.pop(device_id, None)
                self.ctx.nearby.pop(device_id, None)
                self.ctx.events.publish({"type": "device.gone", "device_id": device_id})
            logger.info("discovery stopped")

    async def _start_discovery(self, known: frozenset[str]) -> None:
        from handoffd.discovery.mdns import Discovery

        device = self.ctx.device
        trust = device.trust
        port = self.signaling_port
        if trust is None or port is None:
            return
        if self.discovery is not None:
            with contextlib.suppress(Exception):
                await self.discovery.close()
            self.discovery = None
        self._discovery_known, self._discovery_trust = known, trust
        key = trust.ca_cert.public_key()
        marker_key = identity.raw_public_key(key)  # type: ignore[arg-type]
        disc = Discovery(
            device_id=device.device_id,
            port=port,
            marker_key=marker_key,
            known_devices=lambda: self._discovery_known or frozenset(),
            on_change=self._on_sighting,
            unicast_peers=self.ctx.settings.current.unicast_peers,
        )
        try:
            await disc.start()
        except (OSError, HandoffError) as exc:
            logger.warning("discovery did not start error=%s", exc)
            return
        self.discovery = disc
        logger.info("discovery started known=%d", len(known))

    def _on_sighting(self, event: Any) -> None:
        peer = event.peer
        if event.kind == "nearby":
            self.sightings[peer.device_id] = (tuple(peer.addresses), int(peer.port))
            self._sighted.set()
            self.ctx.nearby[peer.device_id] = tuple(peer.addresses)
            self.ctx.events.publish(
                {
                    "type": "device.nearby",
                    "device_id": peer.device_id,
                    "addresses": list(peer.addresses),
                }
            )
        else:
            self.sightings.pop(peer.device_id, None)
            self.ctx.nearby.pop(peer.device_id, None)
            self.ctx.events.publish({"type": "device.gone", "device_id": peer.device_id})

    def _addresses(self, device_id: str) -> list[tuple[str, int]]:
        """Where to reach a device's signaling port: its sighting, then ``unicast_peers``."""
        from handoffd.config import parse_host_port

        out: list[tuple[str, int]] = []
        seen = self.sightings.get(device_id)
        if seen is not None:
            out.extend((a, seen[1]) for a in seen[0])
        for text in self.ctx.settings.current.unicast_peers:
            with contextlib.suppress(HandoffError):
                host, port = parse_host_port(text)
                if port != 5353 and (host, port) not in out:
                    out.append((host, port))
        return out

    # ------------------------------------------------------------ the server path

    async def _server_loop(self) -> None:
        """Keep a server link (presence, signaling through the server, relay) while paired."""
        sub = self.ctx.events.subscribe()
        try:
            while True:
                device = self.ctx.device
                if not device.paired or device.revoked or device.trust is None:
                    await self._stop_server_path()
                else:
                    try:
                        local = self._local_identity()
                    except HandoffError:
                        local = None
                    if local is not None and local is not self._server_local:
                        await self._stop_server_path()
                        await self._start_server_path(local)
                if await _next_event(sub, 5.0) is None:
                    return
        finally:
            sub.close()

    async def _start_server_path(self, local: Any) -> None:
        try:
            client = self.ctx.device.client()
        except HandoffError as exc:
            logger.info("no server link code=%s", exc.code)
            return
        path = ServerPath(
            client=client,
            local=local,
            on_request=functools.partial(self._on_signal, via_server=True),
            on_channel=self._on_relay_channel,
            on_presence=self._on_presence,
            on_refused=lambda code: self._refused(code, "relay"),
        )
        self.server, self._server_local = path, local
        await path.start()
        logger.info("server link started")

    async def _stop_server_path(self) -> None:
        path, self.server, self._server_local = self.server, None, None
        if path is not None:
            self._on_presence(frozenset(), connected=False)
            await path.close()

    def _on_presence(self, online: frozenset[str], *, connected: bool = True) -> None:
        """The server's list of the account's online devices changed."""
        me = self.ctx.device.device_id
        before = self.ctx.server_online or frozenset()
        live = self.server is not None and self.server.connected and connected
        now = online - {me} if live else frozenset()
        self.ctx.server_online = now if live else None
        for device_id in sorted(now - before):
            self.ctx.events.publish({"type": "device.online", "device_id": device_id})
        for device_id in sorted(before - now):
            self.ctx.events.publish({"type": "device.offline", "device_id": device_id})
        if now - before:
            self._sighted.set()
            self._notice_wake.set()

    async def _on_relay_channel(self, channel: Any) -> None:
        link = Link(channel, on_incoming=self._on_incoming, on_resumed=self._on_link_resumed)
        self._add_link(link)
        link.start()
        logger.info("incoming relay link", extra={"peer": link.peer_id})

    async def _webrtc_options(self, route: str) -> Any:
        """Off the LAN, with the STUN/TURN servers the server hands out; on it, without."""
        from handoffd.transport.webrtc import WebRtcOptions

        server = self.server
        ice = () if server is None or route != "server" else await server.ice_servers()
        return WebRtcOptions(ice_servers=ice)

    def _connector(self) -> Connector:
        """The connector for the current server path (it remembers which dialer made a channel)."""
        if self._connector_for is not self.server or self._connector_cached is None:
            self._connector_cached = peering.connector(
                self._direct, self.server, head_start=HEAD_START
            )
            self._connector_for = self.server
        return self._connector_cached

    def _refused(self, code: str, path: str) -> None:
        """Remember and announce a connection this device refused (coalesced, rate-limited)."""
        self.refusals.add(code, path)

    # ------------------------------------------------------------ links

    def _add_link(self, link: Link) -> None:
        self.links.setdefault(link.peer_id, []).append(link)

    async def _link_to(self, peer_id: str) -> Link:
        """A warm idle link to ``peer_id``, or a new one: direct (LAN or via the server) or relay."""
        for link in list(self.links.get(peer_id, [])):
            idle = time.monotonic() - link.last_used
            lingering = link.lingering
            reusable = lingering or (not link.busy and idle <= WARM_IDLE)
            if link.closed or WARM_IDLE <= 0 or not reusable:
                continue
            link.reserve()  # before any await: no other handoff may take it now
            try:
                alive = lingering or await link.probe(WARM_PROBE_TIMEOUT)
            except BaseException:
                link.release()
                raise
            if link.exchange is not None:  # the peer began an exchange on it meanwhile
                link.release()
                continue
            if not alive:  # the network changed under it, or the peer went away
                logger.info("a warm link did not answer: closed", extra={"peer": peer_id})
                link.release()
                await link.close()
                continue
            logger.info("reusing a warm link", extra={"peer": peer_id})
            return link
        loop = asyncio.get_running_loop()
        grace = loop.time() + DISCOVERY_GRACE  # just started: discovery may need a moment
        while not self._direct.plausible(peer_id) and (left := grace - loop.time()) > 0:
            self._sighted.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, 0.5)):
                    await self._sighted.wait()
        self._local_identity()  # not paired: refuse before dialing
        try:
            channel = await self._connector().connect(
                peer_id, deadline=loop.time() + CONNECT_TIMEOUT
            )
        except NoPathError as exc:
            raise _path_error(exc) from None
        link = Link(channel, on_incoming=self._on_incoming, on_resumed=self._on_link_resumed)
        link.start()
        self._add_link(link)
        return link

    async def _janitor_loop(self) -> None:
        """Close warm links idle for longer than WARM_IDLE; forget closed ones."""
        while True:
            await asyncio.sleep(5.0)
            now = time.monotonic()
            for peer, links in list(self.links.items()):
                for link in list(links):
                    keep = WARM_IDLE if link.used else max(WARM_IDLE, FRESH_LINK_GRACE)
                    if link.closed or (not link.busy and now - link.last_used > keep):
                        logger.info("idle link closed", extra={"peer": peer})
                        links.remove(link)
                        await link.close()
                if not links:
                    self.links.pop(peer, None)

    # ------------------------------------------------------------ signaling

    async def _on_signal(self, data: bytes, *, via_server: bool = False) -> bytes:
        """An envelope on the signaling port: a resume notice, or a WebRTC offer."""
        from handoffd.transport import webrtc

        local = self._local_identity()
        try:
            return await self._on_notice(local, data)
        except EnvelopeError as exc:
            if exc.code != "envelope-wrong-context":
                self._refused(exc.code, "server" if via_server else "signaling")
                raise
        try:
            accepted = await webrtc.accept(
                local=local,
                offer_envelope=data,
                options=await self._webrtc_options("server" if via_server else "lan"),
            )
        except HandoffError as exc:
            self._refused(exc.code, "server" if via_server else "signaling")
            raise
        self._spawn(self._incoming(accepted), "incoming-link")
        return accepted.answer

    async def _incoming(self, accepted: Any) -> None:
        try:
            channel = await accepted.channel()
        except HandoffError as exc:
            logger.info("incoming connection failed code=%s", exc.code)
            return
        link = Link(channel, on_incoming=self._on_incoming, on_resumed=self._on_link_resumed)
        self._add_link(link)
        link.start()

    # ------------------------------------------------------------ outgoing

    async def start_handoff(
        self, session_id: str, target: str, types: Sequence[str] | None
    ) -> HandoffRecord:
        """Validate, record (``pending``) and start a handoff of ``session_id`` to ``target``."""
        self._local_identity()  # not paired: 409
        session = await self.store.run(self.store.get_session, session_id)
        if session is None:
            raise ApiError("no such session", code="session-not-found", status=404)
        if session.state != "active":
            raise ApiError(
                f"the session is {session.state}", code=f"session-{session.state}", status=409
            )
        peer_id, peer_name = await self._resolve_target(target)
        chosen = None if types is None else set(types)
        items = [i for i in session.items if chosen is None or i.type in chosen]
        handoff_id = new_handoff_id()
        now = time.time()
        specs = [
            ItemSpec(type=i.type, name=i.name, mime=i.mime, text=i.text, data=i.data, path=i.path)
            for i in items
        ]
        device = self.ctx.device
        manifest, _sources = await asyncio.to_thread(
            build_manifest,
            handoff_id=handoff_id,
            session_id=session.id,
            app_id=session.app_id,
            title=session.title,
            context=session.context,
            items=specs,
            sender=device.device_id,
            recipient=peer_id,
            now=now,
        )
        local = self._local_identity()
        offer = sign_offer(local.key, local.cert_der, manifest)
        total = sum(i.size for i in manifest.items)
        record = await self.store.run(
            self.store.create_handoff,
            handoff_id,
            direction="out",
            peer=peer_id,
            state="pending",
            session_id=session.id,
            types=sorted({i.type for i in items}) if types is None else list(types),
            bytes_total=total,
        )
        await self.store.run(
            self.db.set_meta, handoff_id, peer_name=peer_name, offer=codec.encode(offer)
        )
        self._publish_state(record)
        self._start_outgoing(handoff_id)
        return record

    async def _resolve_target(self, target: str) -> tuple[str, str]:
        """(device id, name) of a paired, unrevoked device of our account other than us."""
        device = self.ctx.device
        wanted = target.strip()
        parsed: str | None = None
        with contextlib.suppress(HandoffError):
            parsed = identity.parse_device_id(wanted)
        for attempt in range(2):
            devices = await self.store.run(self.store.list_devices)
            match = [d for d in devices if d.device_id == parsed or d.name == wanted]
            # A revoked device may share its name with the one that replaced it.
            match = [d for d in match if not d.revoked] or match
            if match:
                break
            if attempt == 0:
                await self._refresh_devices()
        else:
            match = []
        if (parsed is not None and parsed == device.device_id) or (
            not match and wanted == self.ctx.settings.current.device_name
        ):
            raise ApiError(
                "cannot hand a session to this device itself", code="target-is-self", status=400
            )
        if len(match) > 1:
            raise ApiError(
                f"several devices are named {wanted!r}: use the device id",
                code="target-ambiguous",
                status=409,
            )
        if not match:
            if parsed is not None:
                return parsed, ""  # not in the cache (server down): the certificate decides
            raise ApiError(
                f"no device {wanted!r} in this account", code="device-not-found", status=404
            )
        found = match[0]
        if found.device_id == device.device_id:
            raise ApiError(
                "cannot hand a session to this device itself", code="target-is-self", status=400
            )
        if found.revoked:
            raise ApiError("that device is revoked", code="device-revoked", status=409)
        return found.device_id, found.name

    def _start_outgoing(self, handoff_id: str) -> None:
        task = self._spawn(self._drive_out(handoff_id), f"handoff-{handoff_id[:8]}")
        self._outgoing[handoff_id] = task
        task.add_done_callback(lambda _t: self._outgoing.pop(handoff_id, None))

    async def _restart_outgoing(self) -> None:
        """After a restart, carry on with outgoing handoffs that had not finished."""
        for record in await self.store.run(self.store.list_handoffs, limit=1000):
            if record.direction == "out" and record.state in OUT_ACTIVE:
                logger.info("resuming an outgoing handoff", extra={"handoff": record.id})
                self._start_outgoing(record.id)

    async def cancel(self, handoff_id: str) -> HandoffRecord:
        """Cancel an outgoing handoff that is not yet delivered (idempotent once cancelled)."""
        record = await self._require(handoff_id)
        if record.state == "cancelled":
            return record
        if record.direction != "out" or record.state not in OUT_ACTIVE:
            raise ApiError(
                f"a handoff that is {record.state} cannot be cancelled",
                code="not-cancellable",
                status=409,
            )
        self._cancelled.add(handoff_id)
        task = self._outgoing.get(handoff_id)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), 10.0)
        record = await self._require(handoff_id)
        if record.state != "cancelled" and record.state in OUT_ACTIVE:
            record = await self._set(handoff_id, {"next_retry_at": None}, state="cancelled")
        return record

    async def _sources(self, record: HandoffRecord, manifest: m.Manifest) -> dict[int, SourceItem]:
        """Where each manifest item is read: the session's item of the same name."""
        session = None
        if record.session_id is not None:
            session = await self.store.run(self.store.get_session, record.session_id)
        if session is None:
            raise TransferError("the session is gone", code="session-not-found", retry=False)
        by_name: dict[str, ItemRecord] = {i.name: i for i in session.items}
        out: dict[int, SourceItem] = {}
        for entry in manifest.items:
            item = by_name.get(entry.name)
            if item is None:
                raise TransferError(
                    f"item {entry.name!r} is gone", code="source-changed", retry=False
                )
            if item.path is not None:
                out[entry.index] = SourceItem(entry=entry, path=item.path)
                continue
            data = item.text.encode("utf-8") if item.text is not None else (item.data or b"")
            if len(data) != entry.size:
                raise TransferError(
                    f"item {entry.name!r} changed", code="source-changed", retry=False
                )
            out[entry.index] = SourceItem(entry=entry, data=data)
        return out

    async def _drive_out(self, handoff_id: str) -> None:
        """Connect, send, retry with backoff until delivered, declined, failed or cancelled."""
        try:
            await self._drive_out_inner(handoff_id)
        except asyncio.CancelledError:
            if handoff_id in self._cancelled:
                with contextlib.suppress(HandoffError):
                    record = await self._set(handoff_id, {"next_retry_at": None}, state="cancelled")
                    logger.info("handoff cancelled", extra={"handoff": record.id})
                return
            raise
        except Exception:
            logger.exception("handoff task failed", extra={"handoff": handoff_id})
            with contextlib.suppress(HandoffError):
                await self._set(
                    handoff_id, {}, state="failed", error=_error_text("internal", "internal error")
                )

    async def _drive_out_inner(self, handoff_id: str) -> None:
        record = await self._require(handoff_id)
        meta = await self.store.run(self.db.meta, handoff_id)
        if meta.offer is None:
            raise TransferError("no offer recorded", code="internal", retry=False)
        offer = codec.decode(meta.offer)
        if not isinstance(offer, m.Offer):  # pragma: no cover - we wrote it
            raise TransferError("bad offer recorded", code="internal", retry=False)
        manifest = codec.decode(offer.manifest)
        attempts = record.attempts
        moved: Link | None = None  # a better link taken at a chunk boundary
        while True:
            if moved is None:
                attempts += 1
                record = await self._set(
                    handoff_id, {"next_retry_at": None}, state="connecting", attempts=attempts
                )
            link, moved = moved, None
            upgrader: tuple[Upgrader, asyncio.Task[Any]] | None = None
            try:
                sources = await self._sources(record, manifest)
                if link is None:
                    link = await self._link_to(record.peer)
                await self._set(handoff_id, {}, path=link.channel.path)
                upgrader = self._upgrader(link)
                up = None if upgrader is None else upgrader[0]
                relayed = link.channel.path == PATH_RELAY

                async def stop_upgrading(up: Upgrader | None = up) -> None:
                    if up is not None:
                        await up.close()  # nothing left to move

                report = await run_sender(
                    link,
                    hello=self._hello(),
                    offer=offer,
                    manifest=manifest,
                    sources=sources,
                    hooks=self._sender_hooks(handoff_id, after_delivered=stop_upgrading),
                    # A relay session is the server's to share: do not hold one to wait for
                    # `resumed` (it comes by notice) nor keep it warm.
                    resumed_wait=0.0 if relayed else RESUMED_WAIT,
                    cancelled=lambda: handoff_id in self._cancelled,
                    switch=(lambda: False) if up is None else _ready_check(up),
                )
                logger.info(
                    "handoff sent data_bytes=%d skipped=%d",
                    report.data_bytes,
                    report.skipped,
                    extra={"handoff": handoff_id},
                )
                if relayed:
                    await link.close()
                return
            except PathSwitchError:
                better = None if upgrader is None else upgrader[0].take()
                if link is not None:
                    await link.close()
                if better is not None:
                    moved = Link(
                        better, on_incoming=self._on_incoming, on_resumed=self._on_link_resumed
                    )
                    moved.start()
                    self._add_link(moved)
                    logger.info(
                        "transfer moves to a better path path=%s",
                        better.path,
                        extra={"handoff": handoff_id},
                    )
                continue
            except TransferError as exc:
                if not exc.retry:
                    state = "failed" if exc.code in _LOCAL_FAILURES else "declined"
                    await self._set(
                        handoff_id,
                        {"next_retry_at": None},
                        state=state,
                        error=_error_text(exc.code, exc.message),
                    )
                    return
                error: HandoffError = exc
            except HandoffError as exc:
                error = exc
            finally:
                if link is not None:
                    link.release()  # taken but never begun (failure or cancel before it)
                if upgrader is not None:
                    upgrader[1].cancel()
                    await upgrader[0].close()
            if link is not None and error.code != "link-busy":
                await link.close()  # never reuse a connection that just failed
            record = await self._require(handoff_id)
            if record.state in ("delivered", "resumed"):
                return
            final = _refusal_is_final(error)
            logger.info(
                "handoff attempt failed code=%s reason=%s attempt=%d",
                error.code,
                _reason(error),
                attempts,
                extra={"handoff": handoff_id},
            )
            if final or attempts >= MAX_ATTEMPTS:
                await self._set(
                    handoff_id,
                    {"next_retry_at": None},
                    state="failed",
                    error=_error_text(error.code, error.message, _reason(error)),
                )
                return
            delay = backoff(attempts)
            await self._set(
                handoff_id,
                {"next_retry_at": time.time() + delay},
                state="retrying",
                error=_error_text(error.code, error.message, _reason(error)),
            )
            await asyncio.sleep(delay)

    def _upgrader(self, link: Link) -> tuple[Upgrader, asyncio.Task[Any]] | None:
        """While relayed, try the direct path now and then (in a task of the engine's group)."""
        if link.channel.path != PATH_RELAY or self.server is None:
            return None
        upgrader = Upgrader(
            self._connector(), link.channel, first_delay=UPGRADE_FIRST, interval=UPGRADE_EVERY
        )
        return upgrader, self._spawn(upgrader.run(), "path-upgrade")

    def _sender_hooks(
        self,
        handoff_id: str,
        *,
        after_delivered: Callable[[], Awaitable[None]] | None = None,
    ) -> SenderHooks:
        async def transferring(report: SendReport) -> None:
            await self._set(
                handoff_id,
                {"skipped": report.skipped},
                state="transferring",
                bytes_total=report.total,
                bytes_done=report.skipped,
                error=None,
            )

        def progress(done: int, total: int) -> None:
            self._progress(handoff_id, "out", done, total)

        async def delivered(report: SendReport) -> None:
            total, skipped = report.total, report.skipped
            if not report.accepted:
                # Delivered at once: the receiver already had it all (an earlier exchange
                # committed, but its ``delivered`` never reached us).
                total = skipped = (await self._require(handoff_id)).bytes_total
            await self._set(
                handoff_id,
                {
                    "data_bytes": report.data_bytes,
                    "channel_bytes": report.channel_bytes,
                    "skipped": skipped,
                },
                state="delivered",
                bytes_done=total,
                error=None,
            )
            if after_delivered is not None:
                await after_delivered()

        async def resumed() -> None:
            await self._mark_resumed(handoff_id, None)

        return SenderHooks(
            on_peer_hello=self._gossip,
            on_transferring=transferring,
            on_progress=progress,
            on_delivered=delivered,
            on_resumed=resumed,
        )

    async def _mark_resumed(self, handoff_id: str, peer: str | None) -> bool:
        """The target resumed our handoff: hand the session off; False if not ours."""
        record = await self.store.run(self.store.get_handoff, handoff_id)
        if (
            record is None
            or record.direction != "out"
            or (peer is not None and record.peer != peer)
        ):
            return False
        if record.state == "resumed":
            return True
        if record.session_id is not None:
            with contextlib.suppress(StoreError):
                await self.store.run(self.store.set_session_state, record.session_id, "handed-off")
        await self._set(handoff_id, {"next_retry_at": None}, state="resumed", error=None)
        self.ctx.events.publish(
            {
                "type": "handoff.resumed",
                "handoff_id": handoff_id,
                "direction": "out",
                "session_id": record.session_id,
            }
        )
        task = self._outgoing.get(handoff_id)
        if task is not None and task is not asyncio.current_task():
            task.cancel()  # stop lingering on the link: it is over
        return True

    def _on_link_resumed(self, link: Link, handoff_id: str) -> None:
        self._spawn(self._mark_resumed(handoff_id, link.peer_id), "resumed-notice")

    # ------------------------------------------------------------ incoming

    def _on_incoming(self, link: Link, ex: Any, first: bytes) -> None:
        hooks = ReceiverHooks(
            on_peer_hello=self._gossip,
            on_offer=lambda offer, manifest: self._on_offer_guarded(link, offer, manifest),
            checkpoint=self._checkpoint,
            on_progress=self._receive_progress,
            commit=lambda manifest, names: self._commit(link, manifest, names),
            on_failed=self._on_receive_failed,
        )

        async def receive() -> None:
            task = asyncio.current_task()
            try:
                await run_receiver(
                    link, ex, first, hello=self._hello(), staging=self.staging, hooks=hooks
                )
            finally:
                self.reservations.release(ex.handoff_id, task)
                if ex.handoff_id and self._receiving.get(ex.handoff_id) is task:
                    self._receiving.pop(ex.handoff_id, None)

        self._spawn(receive(), "receive")

    def _receive_progress(self, handoff_id: str, done: int, total: int) -> None:
        self.reservations.progress(handoff_id, total - done)
        self._progress(handoff_id, "in", done, total)

    async def _on_offer_guarded(self, link: Link, offer: m.Offer, manifest: m.Manifest) -> Verdict:
        """``_on_offer``; a state database that cannot grow declines (``no-disk-space``)."""
        try:
            return await self._on_offer(link, offer, manifest)
        except StoreError as exc:
            if exc.code != "store-full":
                raise
            logger.warning(
                "offer declined: the state database is full", extra={"peer": link.peer_id}
            )
            return Verdict(decline=("no-disk-space", "the receiving device's disk is full"))

    async def _on_offer(self, link: Link, offer: m.Offer, manifest: m.Manifest) -> Verdict:
        """Verify and decide an incoming offer (see policy.decide)."""
        trust = self.ctx.device.trust
        if trust is None:
            return Verdict(decline=("not-paired", "this device is not paired"))
        try:
            manifest = open_offer(
                offer, trust=trust, me=self.ctx.device.device_id, peer=link.peer_id, now=time.time()
            )
            names = unique_names(i.name for i in manifest.items)
        except ProtocolError as exc:
            logger.warning("offer refused code=%s", exc.code, extra={"peer": link.peer_id})
            return Verdict(decline=(exc.code, exc.message))
        hid = manifest.handoff_id
        # Another exchange of this handoff (an older connection) must end first.
        older = self._receiving.get(hid)
        current = asyncio.current_task()
        if older is not None and older is not current and not older.done():
            for links in self.links.values():
                for other in links:
                    if (
                        other is not link
                        and other.exchange is not None
                        and other.exchange.handoff_id == hid
                    ):
                        await other.close()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(older), 10.0)
        if current is not None:
            self._receiving[hid] = current
        if await self.store.run(self.db.inbox, hid):
            return Verdict(delivered=True)
        if await self.store.run(self.db.is_expired, hid):
            return Verdict(decline=("expired", "this handoff expired on the receiving device"))
        peer_name = await self._device_name(link.peer_id)
        committed = await asyncio.to_thread(self.staging.committed_manifest, hid)
        if committed is not None:
            await self._record_inbox(manifest, committed, link.peer_id, peer_name)
            return Verdict(delivered=True)
        settings = self.ctx.settings.current
        free = self.reservations.available(
            capped(await asyncio.to_thread(self.staging.free_bytes)), hid
        )
        held = await asyncio.to_thread(self.staging.held_bytes, hid)
        full = await self.store.run(inboxcap.inbox_full, self.store)
        decision = decide(manifest, settings, free_bytes=free, held=held, inbox_full=full)
        record = await self.store.run(self.store.get_handoff, hid)
        if record is not None and (record.direction != "in" or record.peer != link.peer_id):
            return Verdict(decline=("handoff-id-conflict", "handoff id already used"))
        if decision.reason is not None:
            # A decline is final for the sender: what we held of it can never be used. The
            # files go first (on a full disk that is the space the state database needs), and
            # the answer does not wait on recording it: the sender must hear the reason.
            await asyncio.to_thread(self.staging.discard_partial, hid)
            try:
                await self._record_decline(
                    link, manifest, offer, record, peer_name, decision.reason, decision.message
                )
            except StoreError as exc:
                logger.warning("decline not recorded error=%s", exc.code, extra={"handoff": hid})
            return Verdict(decline=(decision.reason, decision.message))
        if record is None:
            record = await self._new_incoming(link, manifest)
        stored = await self.store.run(self.db.meta, hid)
        if stored.offer is not None and stored.offer != offer.manifest:
            # A different manifest under the same id: start over, trust nothing held.
            await asyncio.to_thread(self.staging.discard_partial, hid)
            await self.store.run(self.db.clear_checkpoints, hid)
        await self.store.run(self.db.set_meta, hid, peer_name=peer_name, offer=offer.manifest)
        if not decision.indexes:
            await self._commit(link, manifest, {})
            return Verdict(delivered=True)
        checkpoints = await self.store.run(self.db.checkpoints, hid)
        resume = {i: checkpoints.get(i, 0) for i in decision.indexes}
        accepted_total = sum(i.size for i in manifest.items if i.index in resume)
        self.reservations.reserve(hid, accepted_total - sum(resume.values()), current)
        await self._set(
            hid,
            {},
            state="transferring",
            path=link.channel.path,
            attempts=record.attempts + 1,
            bytes_total=accepted_total,
            bytes_done=sum(resume.values()),
            types=sorted({i.type for i in manifest.items if i.index in resume}),
            error=None,
        )
        if any(resume.values()):
            logger.info("resuming a transfer held=%d", sum(resume.values()), extra={"handoff": hid})
        return Verdict(resume=resume, names={i: names[i] for i in resume})

    async def _new_incoming(self, link: Link, manifest: m.Manifest) -> HandoffRecord:
        """Record an incoming handoff seen for the first time (``pending``)."""
        return await self.store.run(
            self.store.create_handoff,
            manifest.handoff_id,
            direction="in",
            peer=link.peer_id,
            state="pending",
            session_id=manifest.session_id,
            types=sorted({i.type for i in manifest.items}),
            bytes_total=sum(i.size for i in manifest.items),
        )

    async def _record_decline(
        self,
        link: Link,
        manifest: m.Manifest,
        offer: m.Offer,
        record: HandoffRecord | None,
        peer_name: str,
        reason: str,
        message: str,
    ) -> None:
        """The incoming record ``declined`` with ``reason``, its checkpoints gone."""
        hid = manifest.handoff_id
        if record is None:
            await self._new_incoming(link, manifest)
        await self.store.run(self.db.set_meta, hid, peer_name=peer_name, offer=offer.manifest)
        await self.store.run(self.db.clear_checkpoints, hid)
        await self._set(hid, {}, state="declined", error=_error_text(reason, message))

    async def _device_name(self, device_id: str) -> str:
        for d in await self.store.run(self.store.list_devices):
            if d.device_id == device_id:
                return d.name
        return ""

    async def _checkpoint(self, handoff_id: str, index: int, offset: int) -> None:
        await self.store.run(self.db.set_checkpoint, handoff_id, index, offset)

    async def _on_receive_failed(self, handoff_id: str, code: str, message: str) -> None:
        """Record a receiving exchange that ended without delivering; never raises on a state
        database that cannot be written (a full disk): the exchange still ends cleanly."""
        try:
            await self._record_receive_failed(handoff_id, code, message)
        except StoreError as exc:
            logger.warning(
                "receive failure not recorded code=%s error=%s",
                code,
                exc.code,
                extra={"handoff": handoff_id},
            )

    async def _record_receive_failed(self, handoff_id: str, code: str, message: str) -> None:
        if not handoff_id:
            return
        record = await self.store.run(self.store.get_handoff, handoff_id)
        if (
            record is None
            or record.direction != "in"
            or record.state in ("delivered", "resumed", "declined")
        ):
            return
        if code == "cancelled":
            # The source gave up: nothing held is wanted any more.
            await asyncio.to_thread(self.staging.discard_partial, handoff_id)
            await self.store.run(self.db.clear_checkpoints, handoff_id)
            await self._set(handoff_id, {}, state="cancelled", error=_error_text(code, message))
            return
        await self._set(handoff_id, {}, state="retrying", error=_error_text(code, message))

    async def _commit(self, link: Link, manifest: m.Manifest, names: Mapping[int, str]) -> None:
        """Move the verified items into the inbox, record the entry, tell apps."""
        hid = manifest.handoff_id
        inbox_dir = self.staging.inbox_dir(hid)
        items = [
            {
                "type": e.type,
                "name": names[e.index],
                "mime": e.mime,
                "size": e.size,
                "sha256": e.sha256.hex(),
                "path": os.fspath(inbox_dir / names[e.index]),
            }
            for e in manifest.items
            if e.index in names
        ]
        context = manifest_context(manifest)
        peer_name = await self._device_name(link.peer_id)
        doc = {
            "id": hid,
            "session_id": manifest.session_id,
            "app_id": manifest.app_id,
            "title": manifest.title,
            "context": context,
            "from": {"device_id": link.peer_id, "name": peer_name},
            "items": items,
            "sent_at": manifest.created_ms / 1000,
        }
        await asyncio.to_thread(
            self.staging.commit, hid, [(i, names[i]) for i in sorted(names)], doc
        )
        await self._record_inbox(manifest, doc, link.peer_id, peer_name)

    async def _record_inbox(
        self, manifest: m.Manifest, doc: Mapping[str, Any], peer: str, peer_name: str
    ) -> None:
        hid = manifest.handoff_id
        items = doc.get("items")
        context = doc.get("context")
        entry = InboxEntry(
            id=hid,
            session_id=manifest.session_id,
            app_id=manifest.app_id,
            title=manifest.title,
            context=context if isinstance(context, dict) else {},
            from_device=peer,
            from_name=peer_name,
            items=tuple(items) if isinstance(items, list) else (),
            state="received",
            received_at=time.time(),
            resumed_at=None,
        )
        await self.store.run(self.db.add_inbox, entry)
        await self.store.run(self.db.clear_checkpoints, hid)
        record = await self.store.run(self.store.get_handoff, hid)
        if record is not None:
            await self._set(hid, {}, state="delivered", bytes_done=record.bytes_total, error=None)
        self.ctx.events.publish(
            {
                "type": "handoff.received",
                "handoff_id": hid,
                "app_id": entry.app_id,
                "title": entry.title,
                "from": {"device_id": peer, "name": peer_name},
            }
        )
        logger.info("session received", extra={"handoff": hid, "app": entry.app_id})
        await self._launch(entry)

    # ------------------------------------------------------------ apps

    async def _launch(self, entry: InboxEntry) -> None:
        """Launch the registered app for ``entry`` unless one of its clients is connected."""
        if not self.ctx.settings.current.auto_accept:
            return
        if self.app_clients[entry.app_id] > 0:
            logger.info("app connected; not launching", extra={"app": entry.app_id})
            return
        app = await self.store.run(self.store.get_app, entry.app_id)
        if app is None:
            return
        paths = self.ctx.paths
        has_home = (
            paths.config_dir == paths.data_dir and paths.runtime_dir == paths.data_dir / "run"
        )
        env = {
            **os.environ,
            "HANDOFF_ID": entry.id,
            "HANDOFF_HOME": os.fspath(paths.data_dir) if has_home else "",
        }
        await self.launcher.launch(entry.app_id, entry.id, app.launch, env)

    async def _launch_wanted(self, req: LaunchRequest) -> bool:
        """A deferred launch still makes sense: auto_accept, no client, the entry unresumed."""
        if not self.ctx.settings.current.auto_accept or self.app_clients[req.app_id] > 0:
            return False
        entries = await self.store.run(self.db.inbox, req.handoff_id, states=("received",))
        return bool(entries)

    def _launch_failed(self, req: LaunchRequest) -> None:
        self.ctx.events.publish(
            {"type": "handoff.launch_failed", "handoff_id": req.handoff_id, "app_id": req.app_id}
        )

    # ------------------------------------------------------------ inbox and resumed

    async def inbox(self) -> list[InboxEntry]:
        """Received sessions still in the inbox."""
        return await self.store.run(self.db.inbox, None, states=("received", "resumed"))

    async def inbox_entry(self, entry_id: str) -> InboxEntry:
        """One entry; ApiError 404 if unknown or expired."""
        with contextlib.suppress(ProtocolError):
            entries = await self.store.run(
                self.db.inbox, check_handoff_id(entry_id), states=("received", "resumed")
            )
            if entries:
                return entries[0]
        raise ApiError("no such inbox entry", code="inbox-not-found", status=404)

    async def confirm_resumed(self, entry_id: str) -> InboxEntry:
        """The app resumed the entry: record it and tell the source (now or later)."""
        entry = await self.inbox_entry(entry_id)
        if entry.state == "resumed":
            return entry
        now = time.time()
        await self.store.run(self.db.set_inbox_state, entry.id, "resumed", resumed_at=now)
        with contextlib.suppress(StoreError):
            await self._set(entry.id, {}, state="resumed", error=None)
        self.ctx.events.publish(
            {
                "type": "handoff.resumed",
                "handoff_id": entry.id,
                "direction": "in",
                "app_id": entry.app_id,
            }
        )
        # Told over a live link or not, a notice follows: a link can look alive for a while after
        # its peer died, and the source acknowledges a notice only once it has recorded it.
        told = await self._resumed_on_link(entry.id)
        await self.store.run(
            functools.partial(self.db.add_notice, delay=NOTICE_AFTER_LINK if told else 0.0),
            entry.id,
            entry.from_device,
            now,
        )
        self._notice_wake.set()
        return (await self.store.run(self.db.inbox, entry.id))[0]

    async def _resumed_on_link(self, handoff_id: str) -> bool:
        """Tell the source over the exchange still open for this handoff, if any."""
        for links in self.links.values():
            for link in links:
                ex = link.exchange
                c = None if ex is None else ex.core
                if (
                    ex is not None
                    and ex.handoff_id == handoff_id
                    and isinstance(c, core.ReceiverCore)
                    and c.state == core.State.DELIVERED
                    and not link.closed
                ):
                    c.resumed(asyncio.get_running_loop().time())
                    try:
                        for msg in c.outgoing():
                            await link.send(msg)
                    except HandoffError:
                        return False
                    logger.info("source told over the open channel", extra={"handoff": handoff_id})
                    return True
        return False

    async def _notice_loop(self) -> None:
        """Send pending resume notices over the sources' signaling ports, with backoff. A state
        database that cannot be written (a full disk) pauses the notices; it does not end this
        loop (a notice sent but not marked done goes again: the source answers it again)."""
        while True:
            try:
                wait = await self._send_due_notices()
            except StoreError as exc:
                logger.warning("resume notices paused error=%s", exc.code)
                wait = NOTICE_STORE_RETRY
            self._notice_wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._notice_wake.wait()

    async def _send_due_notices(self) -> float:
        """Send the notices that are due; seconds until the next one."""
        now = time.time()
        for handoff_id, device_id, attempts, created in await self.store.run(
            self.db.due_notices, now
        ):
            if now - created > self.ctx.settings.current.inbox_ttl:
                await self.store.run(self.db.notice_done, handoff_id)
                continue
            try:
                await self._send_notice(handoff_id, device_id)
            except HandoffError as exc:
                refused = getattr(exc, "peer_code", None) == "handoff-not-found"
                if refused:
                    await self.store.run(self.db.notice_done, handoff_id)
                    continue
                delay = min(NOTICE_MAX_DELAY, backoff(attempts + 1, base=2.0))
                logger.info(
                    "resume notice not delivered code=%s retry_in=%.0f",
                    exc.code,
                    delay,
                    extra={"handoff": handoff_id},
                )
                await self.store.run(self.db.notice_retry, handoff_id, time.time() + delay)
                continue
            await self.store.run(self.db.notice_done, handoff_id)
            logger.info("source told by notice", extra={"handoff": handoff_id})
        next_at = await self.store.run(self.db.next_notice_at)
        return 60.0 if next_at is None else max(0.05, min(60.0, next_at - time.time()))

    async def _send_notice(self, handoff_id: str, device_id: str) -> None:
        """One signed ``handoff-resumed`` envelope to the source (LAN, else through the server)."""
        from handoffd.transport.signaling import send_offer

        local = self._local_identity()
        payload = codec.encode(m.Resumed(handoff_id=handoff_id))
        loop = asyncio.get_running_loop()
        routes: list[Callable[[bytes], Any]] = []
        for host, port in self._addresses(device_id):

            async def lan(sealed: bytes, host: str = host, port: int = port) -> bytes:
                return await send_offer(
                    host,
                    port,
                    sealed,
                    local=local,
                    peer_device_id=device_id,
                    timeout=NOTICE_TIMEOUT,
                )

            routes.append(lan)
        server = self.server
        if server is not None and server.reachable(device_id):

            async def via_server(sealed: bytes, server: ServerPath = server) -> bytes:
                return await server.request(
                    device_id, sealed, deadline=loop.time() + NOTICE_TIMEOUT
                )

            routes.append(via_server)
        if not routes:
            raise TransportError("the source is not nearby or online", code="peer-not-found")
        last: HandoffError | None = None
        for route in routes:
            sealed = envelope.seal(
                local.key,
                local.cert_der,
                purpose=PURPOSE_RESUMED,
                recipient=device_id,
                payload=payload,
                now=time.time(),
            )
            try:
                answer = await route(sealed)
                opened = envelope.open_envelope(
                    answer,
                    purpose=PURPOSE_RESUMED_ACK,
                    recipient=local.device_id,
                    trust=local.current_trust(),
                    now=time.time(),
                    replay=self._replay,
                )
            except HandoffError as exc:
                last = exc
                continue
            if opened.sender.device_id != device_id or opened.payload != payload:
                last = TransportError("wrong acknowledgement", code="notice-bad-ack")
                continue
            return
        raise last or TransportError("no route", code="peer-not-found")

    async def _on_notice(self, local: Any, data: bytes) -> bytes:
        """A resume notice from a target: mark our handoff resumed, answer with a signed ack."""
        opened = envelope.open_envelope(
            data,
            purpose=PURPOSE_RESUMED,
            recipient=local.device_id,
            trust=local.current_trust(),
            now=time.time(),
            replay=self._replay,
        )
        msg = codec.decode(opened.payload)
        if not isinstance(msg, m.Resumed):
            raise ProtocolError("notice carries no resumed message", code="notice-malformed")
        check_handoff_id(msg.handoff_id)
        if not await self._mark_resumed(msg.handoff_id, opened.sender.device_id):
            raise HandoffError("no such handoff to this device", code="handoff-not-found")
        return envelope.seal(
            local.key,
            local.cert_der,
            purpose=PURPOSE_RESUMED_ACK,
            recipient=opened.sender.device_id,
            payload=opened.payload,
            now=time.time(),
        )

    # ------------------------------------------------------------ expiry

    async def _sweep_loop(self) -> None:
        while True:
            settings = self.ctx.settings.current
            try:
                gone = await self.store.run(
                    expire,
                    self.store,
                    self.db,
                    self.staging,
                    now=time.time(),
                    inbox_ttl=settings.inbox_ttl,
                    partial_ttl=settings.partial_ttl,
                )
            except (OSError, sqlite3.Error, HandoffError):
                logger.exception("expiry sweep failed")
                gone = []
            for handoff_id, kind in gone:
                logger.info("expired kind=%s", kind, extra={"handoff": handoff_id})
                self.ctx.events.publish(
                    {"type": "handoff.expired", "handoff_id": handoff_id, "kind": kind}
                )
            await asyncio.sleep(SWEEP_INTERVAL)

    # ------------------------------------------------------------ records and events

    async def _require(self, handoff_id: str) -> HandoffRecord:
        try:
            check_handoff_id(handoff_id)
        except ProtocolError:
            raise ApiError("no such handoff", code="handoff-not-found", status=404) from None
        record = await self.store.run(self.store.get_handoff, handoff_id)
        if record is None:
            raise ApiError("no such handoff", code="handoff-not-found", status=404)
        return record

    async def _set(self, handoff_id: str, meta: Mapping[str, Any], **fields: Any) -> HandoffRecord:
        before = await self.store.run(self.store.get_handoff, handoff_id)
        record = await self.store.run(self.db.update, handoff_id, meta, **fields)
        if before is None or before.state != record.state:
            self._publish_state(record)
        return record

    def _publish_state(self, record: HandoffRecord) -> None:
        self.ctx.events.publish(
            {
                "type": "handoff.state",
                "handoff_id": record.id,
                "direction": record.direction,
                "state": record.state,
                "error": _error_json(record.error),
            }
        )

    def _progress(self, handoff_id: str, direction: str, done: int, total: int) -> None:
        """Rate-limited (≤ 10/s per handoff) progress: an event and the record's bytes_done."""
        now = time.monotonic()
        if done < total and now - self._progress_at.get(handoff_id, 0.0) < PROGRESS_INTERVAL:
            return
        self._progress_at[handoff_id] = now
        self.ctx.events.publish(
            {
                "type": "handoff.progress",
                "handoff_id": handoff_id,
                "direction": direction,
                "bytes_done": done,
                "bytes_total": total,
            }
        )
        self._spawn(self._store_progress(handoff_id, done), "progress")

    async def _store_progress(self, handoff_id: str, done: int) -> None:
        # Progress is advisory (checkpoints are what count): a full disk only delays it.
        with contextlib.suppress(StoreError):
            await self.store.run(self.db.progress, handoff_id, done)

    async def list_handoffs(self) -> list[dict[str, Any]]:
        """Every handoff as the API shows it."""
        records = await self.store.run(self.store.list_handoffs)
        metas = await self.store.run(self.db.all_meta)
        return [handoff_json(r, metas.get(r.id, HandoffMeta())) for r in records]

    async def get_handoff(self, handoff_id: str) -> dict[str, Any]:
        """One handoff as the API shows it."""
        record = await self._require(handoff_id)
        meta = await self.store.run(self.db.meta, handoff_id)
        return handoff_json(record, meta)


_LOCAL_FAILURES = frozenset(
    {
        "source-changed",
        "session-not-found",
        "internal",
        "item-file-unreadable",
        "item-file-not-regular",
    }
)


def handoff_json(record: HandoffRecord, meta: HandoffMeta) -> dict[str, Any]:
    """A handoff as ``GET /v1/handoffs/{id}`` shows it."""
    return {
        "id": record.id,
        "direction": record.direction,
        "session_id": record.session_id,
        "peer": {"device_id": record.peer, "name": meta.peer_name},
        "state": record.state,
        "path": record.path,
        "types": list(record.types),
        "bytes_done": record.bytes_done,
        "bytes_total": record.bytes_total,
        "attempts": record.attempts,
        "next_retry_at": meta.next_retry_at,
        "error": _error_json(record.error),
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "wire": {
            "data_bytes_sent": meta.data_bytes,
            "channel_bytes_sent": meta.channel_bytes,
            "bytes_already_held": meta.skipped,
        },
    }


# ---------------------------------------------------------------- the extension


class HandoffExtension:
    """The daemon extension: routes (``control.handoff_routes``) and the service's ``run``."""

    def __init__(self) -> None:
        self.service: HandoffService | None = None

    def setup_routes(self, app: web.Application, ctx: ControlContext) -> None:
        """Build the service and add its routes."""
        from handoffd.control.handoff_routes import setup_handoff_routes

        self.service = HandoffService(ctx)
        setup_handoff_routes(app, ctx, self.service)

    async def run(self, ctx: ControlContext) -> None:
        """Run the service until cancelled."""
        if self.service is None:
            self.service = HandoffService(ctx)
        await self.service.run()


def extension() -> HandoffExtension:
    """What ``handoffd.daemon.load_extensions`` calls."""
    return HandoffExtension()


__all__ = [
    "EngineDB",
    "HandoffExtension",
    "HandoffService",
    "InboxEntry",
    "backoff",
    "expire",
    "extension",
    "handoff_json",
]
