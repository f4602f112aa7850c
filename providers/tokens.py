"""Push tokens a vendor said are unregistered, remembered in Redis per provider.

A device token that FCM answered ``UNREGISTERED`` for never comes back (the app was
uninstalled, or the token was rotated: a new registration gets a new token), yet callers
keep sending to it. Remembering it lets later sends fail at once, without a vendor call
that costs quota and latency. Shared through Redis, so every worker knows.

Only a SHA-256 of the token goes into the key: a token is an address, and never lands
in Redis keys or logs in clear. The memory expires (30 days by default) so it stays
bounded, and it is best effort: when Redis fails, the send goes to the vendor, which
gives the same answer.
"""

from __future__ import annotations

import hashlib

from redis.asyncio import Redis
from redis.exceptions import RedisError

from herald import names
from herald.logs import get_logger

log = get_logger(__name__)

DEFAULT_TTL_S = 30 * 24 * 3600


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class UnregisteredTokens:
    def __init__(self, redis: Redis, provider: str, *, ttl_s: int = DEFAULT_TTL_S) -> None:
        self.redis = redis
        self.provider = provider
        self.ttl_s = ttl_s

    def _key(self, token: str) -> str:
        return names.unregistered_token_key(self.provider, token_hash(token))

    async def is_unregistered(self, token: str) -> bool:
        """True when the vendor said so within the TTL; False when unknown or Redis fails."""
        try:
            return bool(await self.redis.exists(self._key(token)))
        except RedisError as exc:
            log.warning("unregistered_token_check_failed", provider=self.provider, error=repr(exc))
            return False

    async def remember(self, token: str) -> None:
        """Best effort: on a Redis failure the next send asks the vendor again."""
        try:
            await self.redis.set(self._key(token), b"1", ex=self.ttl_s)
        except RedisError as exc:
            log.warning("unregistered_token_save_failed", provider=self.provider, error=repr(exc))
