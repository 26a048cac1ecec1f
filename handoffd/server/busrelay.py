"""The bus's relay coordination: the per-account relay cap across instances, session holders, piped-join claims.

Keys: ``hp:rq:<account>`` (the account's relay sessions, scored by a lease
of ``RELAY_LEASE`` s the holder extends on each refresh), ``hp:relay:<session>``
(the holding instance), ``hp:url:<instance>`` (where it is reached),
``hp:via:<key>`` (a one-time claim for a piped join). Used by ``RedisBus``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from handoffd.server.ratelimitredis import unavailable

logger = logging.getLogger("handoffd.server.bus")

REDIS_TIMEOUT = 5.0
CLAIM_TTL = 30.0
RELAY_LEASE = 10.0
"""A relay session counts against its account's cap this long after its holder last said so."""

# The account's relay sessions: a sorted set scored by lease expiry (Redis's clock).
# ARGV: session, cap, lease s. 1 if counted (or already), 0 if the account is at its cap.
_QUOTA_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
redis.call('PEXPIRE', KEYS[1], math.ceil(lease * 1000) + 1000)
return 1
"""

# KEYS[i]: the quota set of ARGV[i + 1]'s account; ARGV[1]: lease s.
_QUOTA_REFRESH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lease = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + lease, ARGV[i + 1])
  redis.call('PEXPIRE', key, math.ceil(lease * 1000) + 1000)
end
return #KEYS
"""


def _quota_key(account_id: str) -> str:
    return f"hp:rq:{account_id}"


class BusRelays:
    """One instance's relay bookkeeping in Redis (owned by its ``RedisBus``)."""

    def __init__(self, redis: aioredis.Redis, instance: str) -> None:
        self._redis = redis
        self._instance = instance
        self._quota_take = redis.register_script(_QUOTA_TAKE)
        self._quota_refresh = redis.register_script(_QUOTA_REFRESH)
        self._relays: dict[str, str] = {}  # relay session held here → its account (quota)

    async def quota_take(self, account_id: str, session_id: str, cap: int) -> bool:
        """Count a new relay session against the account's cap on every instance; False if full."""
        self._relays[session_id] = account_id
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                ok = await self._quota_take(
                    keys=[_quota_key(account_id)], args=[session_id, cap, RELAY_LEASE]
                )
        except (RedisError, OSError, TimeoutError) as exc:
            self._relays.pop(session_id, None)
            logger.warning("bus relay quota failed error=%s", type(exc).__name__)
            raise unavailable() from None
        if not ok:
            self._relays.pop(session_id, None)
        return bool(ok)

    async def quota_release(self, account_id: str, session_id: str) -> None:
        """The session ended: it no longer counts (else its lease runs out)."""
        if self._relays.pop(session_id, None) is None:
            return
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(REDIS_TIMEOUT):
                await self._redis.zrem(_quota_key(account_id), session_id)

    async def refresh(self) -> None:
        """Extend the lease of every relay session held here (a dead instance's run out)."""
        if not self._relays:
            return
        held = list(self._relays.items())
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(REDIS_TIMEOUT):
                await self._quota_refresh(
                    keys=[_quota_key(a) for _, a in held], args=[RELAY_LEASE, *(s for s, _ in held)]
                )

    async def hold(self, session_id: str, ttl: float, internal_url: str | None) -> None:
        """Name this instance as the session's holder for ``ttl`` s (until both sides joined)."""
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(REDIS_TIMEOUT), self._redis.pipeline() as pipe:
                pipe.set(f"hp:relay:{session_id}", self._instance, px=int(ttl * 1000))
                if internal_url is not None:  # so a just-started instance is reachable
                    pipe.set(f"hp:url:{self._instance}", internal_url, px=int(ttl * 1000))
                await pipe.execute()

    async def holder_url(self, session_id: str) -> str | None:
        """The URL of the other instance holding the session, if any."""
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                instance = await self._redis.get(f"hp:relay:{session_id}")
                if instance is None or instance == self._instance:
                    return None
                url = await self._redis.get("hp:url:" + str(instance))
        except (RedisError, OSError, TimeoutError) as exc:
            logger.warning("bus read failed error=%s", type(exc).__name__)
            return None
        return None if url is None else str(url)

    async def put_claim(self, key: str, claim: dict[str, str]) -> None:
        """Store a one-time claim for a piped join (``key`` is 256 random bits)."""
        async with asyncio.timeout(REDIS_TIMEOUT):
            await self._redis.set(f"hp:via:{key}", json.dumps(claim), px=int(CLAIM_TTL * 1000))

    async def take_claim(self, key: str) -> dict[str, str] | None:
        """The claim stored under ``key``, removed (so it works once); None if absent."""
        if len(key) > 64:
            return None
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                raw = await self._redis.getdel(f"hp:via:{key}")
        except (RedisError, OSError, TimeoutError):
            return None
        try:
            claim = json.loads(raw) if isinstance(raw, str) else None
        except ValueError:
            return None
        if not isinstance(claim, dict) or not all(
            isinstance(claim.get(k), str) for k in ("device", "session", "token")
        ):
            return None
        return {k: str(claim[k]) for k in ("device", "session", "token")}
