"""The Redis limiter: one Lua script per decision, so one round trip and no races.

The script reads the key's TAT, applies GCRA (a line-for-line copy of
:func:`ratelimit.gcra.decide`, in integer microseconds), writes the new TAT with a ``PX``
expiry that ends exactly when the bucket is full again, and returns the decision. By
default it reads the clock with ``TIME`` on the Redis server, so processes on hosts whose
clocks disagree still share one timeline; ``now=`` overrides it (tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from herald import names
from herald.batching import Batcher
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


#: One request's call of ``_GCRA_MANY``: its keys and its arguments.
_Call = tuple[list[str], list[int | str]]
#: How long a call may wait for the pipeline before it counts as Redis being down: the
#: client's own socket timeouts (2 s to connect, 2 s to answer) bound the one in flight.
PIPELINE_WAIT_S = 4.0


class RedisRateLimiter(RateLimiter):
    """GCRA over a shared Redis; the client is made at start-up and passed in.

    The ``hit_many`` calls of concurrent requests go to Redis together, in one pipeline
    (each still one atomic script run), so a busy API pays one round trip per batch.
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._gcra = redis.register_script(_GCRA)
        self._gcra_many = redis.register_script(_GCRA_MANY)
        self._calls: Batcher[_Call, Any] = Batcher(
            self._pipeline,
            wait_s=PIPELINE_WAIT_S,
            shared_failure=lambda _exc: True,  # a failed pipeline failed for everyone
            timeout_error=lambda wait_s: RedisError(f"no pipeline slot within {wait_s:g} s"),
        )

    @property
    def pipelines(self) -> int:
        """How many pipelines ``hit_many`` has sent (tests read it)."""
        return self._calls.stats.batches

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
            replies = await self._calls.submit((keys, args))
            if isinstance(replies, Exception):  # this call's own error, inside the pipeline
                raise replies
        except (RedisError, OSError) as exc:
            listed = ", ".join(repr(key) for key, _ in requests)
            raise RateLimitBackendError(f"rate limiter: hit on {listed} failed: {exc}") from exc
        return [
            Decision(bool(allowed), int(remaining), retry_us / US_PER_S, reset_us / US_PER_S)
            for allowed, remaining, retry_us, reset_us in replies
        ]

    async def _pipeline(self, calls: Sequence[_Call]) -> list[Any]:
        """Run every call's script in one pipeline: each reply, or its error as a value.

        The script goes by its SHA; the first use on a Redis that lacks it (new or
        flushed) loads it and runs those calls again."""
        replies = await self._send(calls)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            self._gcra_many.sha = await self.redis.script_load(_GCRA_MANY)
            again = await self._send([calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _send(self, calls: Sequence[_Call]) -> list[Any]:
        sha = self._gcra_many.sha
        async with self.redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))

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
