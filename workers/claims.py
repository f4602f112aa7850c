"""Idempotency claims in Redis: one worker at a time per notification, "done" once sent.

A claim is a lease (``SET NX PX``) so a crashed worker's claim expires by itself; the
database row stays the source of truth and is checked after every claim.
"""

from __future__ import annotations

import enum

from redis.asyncio import Redis

from herald import names

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
DONE = b"done"


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

    async def release(self, notification_id: str, generation: int) -> None:
        await self._release(keys=[names.claim_key(notification_id, generation)], args=[self.owner])

    async def mark_done(self, notification_id: str, generation: int) -> None:
        await self.redis.set(names.claim_key(notification_id, generation), DONE, ex=self.done_ttl_s)
