"""The bus between server instances (Redis through redis-py's asyncio client).

Only with ``serve --bus redis://…`` (or ``$HANDOFF_BUS``); without it the hub
is what it always was, one process's memory. The bus carries what the hub
must know about the other instances; nothing in it is trusted more than the
instances that wrote it (Redis is inside the deployment's trust boundary).

Keys (all under ``hp:``):

- ``hp:dev:<device>``: the instance holding the device's socket; expires
  ``DEVICE_TTL`` s after its instance last refreshed it (every ``REFRESH`` s).
- ``hp:acct:<account>``: sorted set of the account's online devices, score =
  expiry (Unix s). A killed instance stops refreshing, so its devices drop
  out within ``DEVICE_TTL + REFRESH`` s and every other instance pushes the
  new presence.
- ``hp:nonce:<device>:<nonce>``: a signed request's nonce (``SET NX``), kept
  for the replay window, so a request replayed to another instance is refused.
- ``hp:rl:<limit>:<key>``: a shared rate-limit bucket (``ratelimitredis``).
- ``hp:rq:<account>``: the account's relay sessions on every instance, scored
  by a lease (``RELAY_LEASE`` s) the holder extends on each refresh
  (``handoffd.server.busrelay``, with the relay holders and piped-join claims).

Channels: ``hp:all`` (presence changes and revocations, for every instance)
and ``hp:inst:<instance>`` (signals for the devices that instance holds).
After Redis comes back, the listener resubscribes and the refresh loop
writes every local device again: presence is rebuilt within ``REFRESH`` s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from handoffd.errors import ServerError
from handoffd.server.busrelay import BusRelays
from handoffd.server.ratelimitredis import SharedRateLimiter, unavailable

if TYPE_CHECKING:
    from handoffd.server.wsconn import Conn, LocalHub, RemoteDevice

logger = logging.getLogger("handoffd.server.bus")

DEVICE_TTL = 6.0
REFRESH = 2.0
REDIS_TIMEOUT = 5.0
RETRY = 1.0
CH_ALL = "hp:all"
MAX_BUS_MESSAGE = 512 * 1024

# Delete a device's keys only if this instance still holds it (it may have moved on).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[2])
  return 1
end
return 0
"""


def _dev_key(device_id: str) -> str:
    return f"hp:dev:{device_id}"


def _acct_key(account_id: str) -> str:
    return f"hp:acct:{account_id}"


def _inst_channel(instance: str) -> str:
    return f"hp:inst:{instance}"


class RedisBus:
    """One instance's side of the bus (see the module docstring); owned by the app."""

    def __init__(self, url: str, hub: LocalHub) -> None:
        self.instance = secrets.token_hex(8)
        self._hub = hub
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT,
        )
        self._release = self._redis.register_script(_RELEASE)
        self.relays = BusRelays(self._redis, self.instance)
        self._online: dict[str, frozenset[str]] = {}  # account → online everywhere (last read)
        self._pushed: dict[str, frozenset[str]] = {}  # account → what local devices were told
        self._tasks: set[asyncio.Task[None]] = set()
        self.subscribed = asyncio.Event()
        self.internal_url: str | None = None  # where other instances reach this one (relay pipes)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the listener and the refresh loop."""
        for coro, name in ((self._listen(), "bus-listen"), (self._refresh_loop(), "bus-refresh")):
            task = asyncio.create_task(coro, name=name)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop the tasks and close the connection pool (idempotent)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)  # our own cancellation still goes through
        for task in tasks:
            if not task.cancelled():
                task.result()  # a crash of a bus task is not hidden
        await self._redis.aclose()

    # ------------------------------------------------------------ presence

    def online(self, account_id: str) -> frozenset[str]:
        """The account's devices online on any instance, as last read from Redis."""
        return self._online.get(account_id, frozenset())

    async def fetch(self, account_id: str) -> frozenset[str]:
        """Read the account's online devices from Redis (the last known set if it fails)."""
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                ids = await self._redis.zrangebyscore(_acct_key(account_id), time.time(), "+inf")
        except (RedisError, OSError, TimeoutError) as exc:
            logger.warning("bus read failed error=%s", type(exc).__name__)
            return self.online(account_id)
        online = frozenset(str(i) for i in ids)
        self._online[account_id] = online
        return online

    async def device_online(self, conn: Conn) -> None:
        """Record that this instance holds ``conn``'s device; refresh the account's set."""
        await self._write_devices([conn])
        self._online[conn.account_id] = (await self.fetch(conn.account_id)) | {conn.device_id}
        self._pushed[conn.account_id] = self._online[conn.account_id]

    async def announce(self, conn: Conn, *, online: bool) -> None:
        """Tell every instance that the account's presence changed."""
        message = {
            "t": "presence",
            "account": conn.account_id,
            "device": conn.device_id,
            "instance": self.instance,
            "online": online,
        }
        await self._publish(CH_ALL, message)

    async def device_offline(self, conn: Conn) -> None:
        """Forget the device if this instance still holds it; refresh the account's set."""
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                await self._release(
                    keys=[_dev_key(conn.device_id), _acct_key(conn.account_id)],
                    args=[self.instance, conn.device_id],
                )
        except (RedisError, OSError, TimeoutError) as exc:
            logger.warning("bus write failed error=%s", type(exc).__name__)
        online = await self.fetch(conn.account_id)
        self._online[conn.account_id] = online - {conn.device_id}
        self._pushed[conn.account_id] = self._online[conn.account_id]

    async def _write_devices(self, conns: Iterable[Conn]) -> None:
        expiry = time.time() + DEVICE_TTL
        try:
            async with asyncio.timeout(REDIS_TIMEOUT), self._redis.pipeline() as pipe:
                for c in conns:
                    pipe.set(_dev_key(c.device_id), self.instance, px=int(DEVICE_TTL * 1000))
                    pipe.zadd(_acct_key(c.account_id), {c.device_id: expiry})
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            logger.warning("bus write failed error=%s", type(exc).__name__)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH)
            await self.refresh()

    async def refresh(self) -> None:
        """Rewrite every local device's keys; push presence that changed elsewhere."""
        conns = self._hub.local_connections()
        if conns:
            await self._write_devices(conns)
        await self.relays.refresh()
        if self.internal_url is not None:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(REDIS_TIMEOUT):
                    await self._redis.set(
                        f"hp:url:{self.instance}", self.internal_url, px=int(DEVICE_TTL * 1000)
                    )
        accounts = {c.account_id for c in conns}
        for gone in set(self._online) - accounts:  # only accounts served here stay cached
            self._online.pop(gone, None)
            self._pushed.pop(gone, None)
        for account_id in accounts:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(REDIS_TIMEOUT):
                    await self._redis.zremrangebyscore(_acct_key(account_id), "-inf", time.time())
            await self._push(account_id)

    async def _push(self, account_id: str) -> None:
        online = await self.fetch(account_id) | self._hub.local_online(account_id)
        self._online[account_id] = online
        if self._pushed.get(account_id) != online:
            self._pushed[account_id] = online
            await self._hub.push_presence(account_id)

    # ------------------------------------------------------------ signals, revocation, nonces

    async def _holder(self, account_id: str, device_id: str) -> str | None:
        """The instance holding the device if it is online in ``account_id``."""
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                score = await self._redis.zscore(_acct_key(account_id), device_id)
                instance = await self._redis.get(_dev_key(device_id))
        except (RedisError, OSError, TimeoutError) as exc:
            logger.warning("bus read failed error=%s", type(exc).__name__)
            return None
        if score is None or float(score) < time.time() or instance is None:
            return None
        return str(instance)

    async def is_online(self, account_id: str, device_id: str) -> bool:
        """True if another instance (or this one) holds the device, online in ``account_id``."""
        return await self._holder(account_id, device_id) is not None

    async def forward_signal(self, account_id: str, sender: str, to: str, data: str) -> bool:
        """Send a signal to the instance holding ``to`` if it is online in ``account_id``."""
        instance = await self._holder(account_id, to)
        if instance is None:
            return False
        message = {"t": "signal", "account": account_id, "from": sender, "to": to, "data": data}
        return await self._publish(_inst_channel(instance), message) > 0

    async def deliver(self, target: RemoteDevice, message: dict[str, Any]) -> bool:
        """Send a hub message (e.g. a relay offer) to a device another instance holds."""
        instance = await self._holder(target.account_id, target.device_id)
        if instance is None:
            return False
        wrapped = {
            "t": "deliver",
            "account": target.account_id,
            "to": target.device_id,
            "message": message,
        }
        return await self._publish(_inst_channel(instance), wrapped) > 0

    # ------------------------------------------------------------ shared limits

    def limiter(self, name: str, per_minute: float, burst: int) -> SharedRateLimiter:
        """A rate limit shared by every instance (``ratelimit.LimiterFactory``)."""
        return SharedRateLimiter(self._redis, name, per_minute=per_minute, burst=burst)

    async def relay_quota_take(self, account_id: str, session_id: str, cap: int) -> bool:
        """Count a new relay session against the account's cap on every instance; False if full."""
        return await self.relays.quota_take(account_id, session_id, cap)

    async def relay_quota_release(self, account_id: str, session_id: str) -> None:
        """The session ended: it no longer counts (else its lease runs out)."""
        await self.relays.quota_release(account_id, session_id)

    async def publish_relay_close(self, account_id: str, device_id: str, session_id: str) -> None:
        """Ask the instance holding ``session_id`` to end it (``device_id`` must be a party)."""
        message = {"t": "relay-close", "account": account_id, "device": device_id}
        await self._publish(CH_ALL, {**message, "session": session_id})

    # ------------------------------------------------------------ relay sessions (relaybus.py)

    async def hold_relay(self, session_id: str, ttl: float) -> None:
        """Name this instance as the session's holder for ``ttl`` s (until both sides joined)."""
        await self.relays.hold(session_id, ttl, self.internal_url)

    async def relay_holder_url(self, session_id: str) -> str | None:
        """The URL of the other instance holding the session, if any."""
        return await self.relays.holder_url(session_id)

    async def put_relay_claim(self, key: str, claim: dict[str, str]) -> None:
        """Store a one-time claim for a piped join (``key`` is 256 random bits)."""
        await self.relays.put_claim(key, claim)

    async def take_relay_claim(self, key: str) -> dict[str, str] | None:
        """The claim stored under ``key``, removed (so it works once); None if absent."""
        return await self.relays.take_claim(key)

    async def publish_revoked(self, device_ids: list[str]) -> None:
        """Ask every instance to disconnect these revoked devices."""
        await self._publish(CH_ALL, {"t": "revoked", "devices": device_ids})

    async def claim_nonce(self, device_id: str, nonce: str, ttl: float) -> None:
        """ServerError(auth-replayed) if any instance saw this request nonce within ``ttl`` s."""
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                fresh = await self._redis.set(
                    f"hp:nonce:{device_id}:{nonce}", "1", nx=True, px=max(1, int(ttl * 1000))
                )
        except (RedisError, OSError, TimeoutError) as exc:
            logger.warning("bus nonce check failed error=%s", type(exc).__name__)
            raise unavailable() from None
        if not fresh:
            raise ServerError("request was already used (replay)", code="auth-replayed", status=401)

    async def _publish(self, channel: str, message: dict[str, Any]) -> int:
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                return int(await self._redis.publish(channel, json.dumps(message)))
        except (RedisError, OSError, TimeoutError) as exc:
            logger.warning("bus publish failed error=%s", type(exc).__name__)
            return 0

    # ------------------------------------------------------------ the listener

    async def _listen(self) -> None:
        channels = (CH_ALL, _inst_channel(self.instance))
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*channels)
                self.subscribed.set()
                logger.info("bus subscribed instance=%s", self.instance)
                await self.refresh()  # after a Redis restart: presence rebuilt at once
                for account_id in {c.account_id for c in self._hub.local_connections()}:
                    await self._publish(CH_ALL, {"t": "presence", "account": account_id})
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is not None and msg.get("type") == "message":
                        await self._on_message(msg.get("data"))
            except (RedisError, OSError, TimeoutError) as exc:
                self.subscribed.clear()
                logger.warning("bus connection lost error=%s", type(exc).__name__)
            finally:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    async with asyncio.timeout(REDIS_TIMEOUT):
                        await pubsub.aclose()
            await asyncio.sleep(RETRY)

    async def _on_message(self, raw: object) -> None:
        if not isinstance(raw, str) or len(raw) > MAX_BUS_MESSAGE:
            return
        try:
            msg = json.loads(raw)
        except ValueError:
            return
        if not isinstance(msg, dict):
            return
        kind = msg.get("t")
        if kind == "signal" and isinstance(msg.get("data"), str):
            signal = {"type": "signal", "from": str(msg.get("from")), "data": msg["data"]}
            await self._hub.deliver(str(msg.get("account")), str(msg.get("to")), signal)
        elif kind == "deliver" and isinstance(msg.get("message"), dict):
            await self._hub.deliver(str(msg.get("account")), str(msg.get("to")), msg["message"])
        elif kind == "presence":
            account_id, device_id = str(msg.get("account")), str(msg.get("device"))
            if (
                msg.get("online")
                and msg.get("instance") != self.instance
                and self._hub.connection(device_id) is not None
                and await self._holder(account_id, device_id) not in (None, self.instance)
            ):  # the device's newer socket is elsewhere (not: it came back here meanwhile)
                await self._hub.moved_elsewhere(device_id)
            if self._hub.local_online(account_id):
                await self._push(account_id)
        elif kind == "relay-close" and self._hub.relay is not None:
            await self._hub.relay.close_for(
                str(msg.get("account")), str(msg.get("device")), str(msg.get("session"))
            )
        elif kind == "revoked" and isinstance(msg.get("devices"), list):
            ids = [str(d) for d in msg["devices"]]
            await self._hub.disconnect_revoked(ids, local_only=True)


def setup_bus(app: web.Application, hub: LocalHub, url: str) -> RedisBus:
    """A bus for the hub (the caller sets ``hub.bus``); it runs while the app runs."""
    bus = RedisBus(url, hub)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        bus.start()
        yield
        await bus.close()

    app.cleanup_ctx.append(lifecycle)
    return bus
