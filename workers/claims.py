"""Idempotency claims in Redis: one worker at a time per notification, "done" once sent.

A claim is a lease (``SET NX PX``) so a crashed worker's claim expires by itself. It is
only the fast path: Redis may lose it (a restart without persistence, a failover that
drops writes), so the database row's own lease (workers/store.py) is what fences a send.
"""

from __future__ import annotations

import enum
import itertools
import secrets

from redis.asyncio import Redis

from config.settings import Settings
from herald import names

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
DONE = b"done"
#: A lease outlives the longest vendor call by this much, so a live call never loses it.
LEASE_MARGIN_S = 2.0


def lease_seconds(settings: Settings) -> float:
    """How long a claim and a row's lease last: ``HERALD_CLAIM_LEASE_S``, but never less
    than one provider call plus a margin (each attempt renews it)."""
    return max(settings.claim_lease_s, settings.provider_timeout_s + LEASE_MARGIN_S)


class LeaseTokens:
    """Lease owners unique to each delivery: ``<worker>/<random>-<n>``, so two copies of
    one message in the same worker never share a lease (at most 100 characters)."""

    def __init__(self, worker: str) -> None:
        self._prefix = f"{worker[:70]}/{secrets.token_hex(4)}-"
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter)}"


class ClaimResult(enum.Enum):
    ACQUIRED = "acquired"
    HELD = "held"  # another worker is on it right now
    DONE = "done"  # already sent


class Claims:
    def __init__(
        self, redis: Redis, *, owner: str, lease_s: float, done_ttl_s: int = 86400
    ) -> None:
        self.redis = redis
        self.owner = owner.encode()
        self.lease_ms = int(lease_s * 1000)
        self.done_ttl_s = done_ttl_s
        self._release = redis.register_script(_RELEASE)

    async def acquire(self, notification_id: str, generation: int) -> ClaimResult:
        key = names.claim_key(notification_id, generation)
        if await self.redis.set(key, self.owner, nx=True, px=self.lease_ms):
            return ClaimResult.ACQUIRED
        current = await self.redis.get(key)
        if current == DONE:
            return ClaimResult.DONE
        # The lease may have ended between our two calls: try once more.
        if current is None and await self.redis.set(key, self.owner, nx=True, px=self.lease_ms):
            return ClaimResult.ACQUIRED
        return ClaimResult.HELD

    async def acquire_many(self, keys: list[tuple[str, int]]) -> list[ClaimResult]:
        """``acquire`` for a batch in one pipeline (and a second one to tell, for those
        taken, "done" from "held"). Two copies of one message in a batch: the second is
        held."""
        claim_keys = [names.claim_key(nid, generation) for nid, generation in keys]
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in claim_keys:
                pipe.set(key, self.owner, nx=True, px=self.lease_ms)
            won = await pipe.execute()
        results = [ClaimResult.ACQUIRED if ok else ClaimResult.HELD for ok in won]
        taken = [i for i, ok in enumerate(won) if not ok]
        if taken:
            current = await self.redis.mget([claim_keys[i] for i in taken])
            for i, value in zip(taken, current, strict=True):
                if value == DONE:
                    results[i] = ClaimResult.DONE
        return results

    async def mark_done_many(self, keys: list[tuple[str, int]]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for nid, generation in keys:
                pipe.set(names.claim_key(nid, generation), DONE, ex=self.done_ttl_s)
            await pipe.execute()

    async def release(self, notification_id: str, generation: int) -> None:
        await self._release(keys=[names.claim_key(notification_id, generation)], args=[self.owner])

    async def mark_done(self, notification_id: str, generation: int) -> None:
        await self.redis.set(names.claim_key(notification_id, generation), DONE, ex=self.done_ttl_s)
