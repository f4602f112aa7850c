"""The Redis limiter: one Lua script per decision, so one round trip and no races.

The script reads the key's TAT, applies GCRA (a line-for-line copy of
:func:`ratelimit.gcra.decide`, in integer microseconds), writes the new TAT with a ``PX``
expiry that ends exactly when the bucket is full again, and returns the decision. By
default it reads the clock with ``TIME`` on the Redis server, so processes on hosts whose
clocks disagree still share one timeline; ``now=`` overrides it (tests).
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError

from herald import names
from ratelimit.base import (
    US_PER_S,
    Decision,
    Limit,
    RateLimitBackendError,
    RateLimiter,
    check_cost,
    to_us,
)

# KEYS[1]: the key's TAT. ARGV: interval_us, burst, cost, now_us ('' = the server's clock),
# '1' to spend (hit) or '0' to only look (peek).
# Returns {allowed (0/1), remaining, retry_after_us, reset_after_us}: all integers.
_GCRA = """
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2]) * interval
local cost = tonumber(ARGV[3])
local now
if ARGV[4] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[4])
end
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now)
local new_tat = tat + cost * interval
local allow_at = new_tat - capacity
if now < allow_at then
  return {0, math.floor(math.max(0, capacity - (tat - now)) / interval), allow_at - now, tat - now}
end
if ARGV[5] == '1' and new_tat > now then
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat),
             'PX', math.ceil((new_tat - now) / 1000))
end
return {1, math.floor((now - allow_at) / interval), 0, new_tat - now}
"""


# Several decisions in one call, in order, stopping at the first refusal (each step is
# the script above, spending). KEYS: the keys' TATs. ARGV[1]: now_us ('' = the server's
# clock, read once for all keys); then per key: interval_us, burst.
# Returns one {allowed, remaining, retry_after_us, reset_after_us} per key decided.
_GCRA_MANY = """
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local out = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i])
  local capacity = tonumber(ARGV[2 * i + 1]) * interval
  local tat = math.max(tonumber(redis.call('GET', key) or now), now)
  local new_tat = tat + interval
  local allow_at = new_tat - capacity
  if now < allow_at then
    out[i] = {0, math.floor(math.max(0, capacity - (tat - now)) / interval),
              allow_at - now, tat - now}
    return out
  end
  if new_tat > now then
    redis.call('SET', key, string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
  end
  out[i] = {1, math.floor((now - allow_at) / interval), 0, new_tat - now}
end
return out
"""


class RedisRateLimiter(RateLimiter):
    """GCRA over a shared Redis; the client is made at start-up and passed in."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._gcra = redis.register_script(_GCRA)
        self._gcra_many = redis.register_script(_GCRA_MANY)

    async def hit(
        self, key: str, limit: Limit, *, cost: int = 1, now: float | None = None
    ) -> Decision:
        return await self._decide(key, limit, cost, now, spend=True)

    async def peek(
        self, key: str, limit: Limit, *, cost: int = 1, now: float | None = None
    ) -> Decision:
        return await self._decide(key, limit, cost, now, spend=False)

    async def hit_many(
        self, requests: Sequence[tuple[str, Limit]], *, now: float | None = None
    ) -> list[Decision]:
        """Every decision of one request in one script call (one round trip)."""
        if not requests:
            return []
        keys = [names.ratelimit_key(key) for key, _ in requests]
        args: list[int | str] = ["" if now is None else to_us(now)]
        for _, limit in requests:
            args += [limit.interval_us, limit.burst]
        try:
            replies = await self._gcra_many(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            listed = ", ".join(repr(key) for key, _ in requests)
            raise RateLimitBackendError(f"rate limiter: hit on {listed} failed: {exc}") from exc
        return [
            Decision(bool(allowed), int(remaining), retry_us / US_PER_S, reset_us / US_PER_S)
            for allowed, remaining, retry_us, reset_us in replies
        ]

    async def reset(self, key: str) -> None:
        try:
            await self.redis.delete(names.ratelimit_key(key))
        except (RedisError, OSError) as exc:
            raise RateLimitBackendError(f"rate limiter: reset of {key!r} failed: {exc}") from exc

    async def _decide(
        self, key: str, limit: Limit, cost: int, now: float | None, *, spend: bool
    ) -> Decision:
        check_cost(limit, cost)
        args = [
            limit.interval_us,
            limit.burst,
            cost,
            "" if now is None else to_us(now),
            1 if spend else 0,
        ]
        try:
            reply = await self._gcra(keys=[names.ratelimit_key(key)], args=args)
        except (RedisError, OSError) as exc:
            verb = "hit" if spend else "peek"
            raise RateLimitBackendError(f"rate limiter: {verb} on {key!r} failed: {exc}") from exc
        allowed, remaining, retry_us, reset_us = reply
        return Decision(bool(allowed), int(remaining), retry_us / US_PER_S, reset_us / US_PER_S)
