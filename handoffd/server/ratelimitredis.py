"""Rate limits shared by every instance: the same token buckets as ``ratelimit.RateLimiter``, in Redis.

Only with a bus (``serve --bus redis://…``). One Lua script per call takes or
gives back a token atomically, on Redis's clock (instances' clocks may differ).
A bucket is a hash ``hp:rl:<limit>:<key>`` (tokens, stamp) that expires when
it would be full again, so a bucket below full is never forgotten and a full
one is the same as an absent one. Redis unreachable: ``bus-unavailable`` (503),
nothing is let through (fail closed).
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from handoffd.errors import ServerError

logger = logging.getLogger("handoffd.server.ratelimit")

REDIS_TIMEOUT = 5.0

# ARGV: rate (tokens/s), burst, op ("take" | "refund"). Returns {taken/refunded 0|1, retry s}.
_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local v = redis.call('HMGET', KEYS[1], 'tk', 'ts')
local tokens = burst
if v[1] then
  tokens = math.min(burst, tonumber(v[1]) + math.max(0, now - tonumber(v[2])) * rate)
elseif ARGV[3] == 'refund' then
  return {0, 0}
end
local ok = 0
if ARGV[3] == 'take' then
  if tokens >= 1 then
    tokens = tokens - 1
    ok = 1
  end
else
  tokens = math.min(burst, tokens + 1)
  ok = 1
end
if tokens >= burst then
  redis.call('DEL', KEYS[1])
else
  redis.call('HSET', KEYS[1], 'tk', string.format('%.6f', tokens), 'ts', string.format('%.6f', now))
  redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
end
local retry = 0
if tokens < 1 then
  retry = math.max(1, math.ceil((1 - tokens) / rate))
end
return {ok, retry}
"""


def unavailable() -> ServerError:
    """The error every shared limit answers while Redis is unreachable."""
    return ServerError("the server's bus is unavailable", code="bus-unavailable", status=503)


class SharedRateLimiter:
    """Token buckets per key in Redis: ``burst`` at once, ``per_minute`` sustained, all instances."""

    def __init__(self, redis: aioredis.Redis, name: str, *, per_minute: float, burst: int) -> None:
        if per_minute <= 0 or burst < 1:
            raise ValueError("per_minute and burst must be positive")
        self._redis = redis
        self._prefix = f"hp:rl:{name}:"
        self._rate = per_minute / 60.0
        self._burst = burst
        self._script = redis.register_script(_BUCKET)

    async def _run(self, key: str, op: str) -> tuple[int, int]:
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                ok, retry = await self._script(
                    keys=[self._prefix + key], args=[repr(self._rate), self._burst, op]
                )
        except (RedisError, OSError, TimeoutError) as exc:
            logger.warning("shared rate limit failed error=%s", type(exc).__name__)
            raise unavailable() from None
        return int(ok), int(retry)

    async def acquire(self, key: str, now: float) -> int:
        """0 if a token was taken for ``key``, else seconds to wait (nothing taken)."""
        ok, retry = await self._run(key, "take")
        return 0 if ok else max(1, retry)

    async def give_back(self, key: str, now: float) -> None:
        """Give back a token taken for work that turned out not to count."""
        await self._run(key, "refund")
