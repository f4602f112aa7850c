"""API keys: stored as SHA-256 hashes (the keys are random, so no slow hash is needed).

A process caches a looked-up key for ``HERALD_API_KEY_CACHE_S`` (5 s); a revocation is
broadcast on Redis and clears every process's cache at once, so the cache is only the
bound when that broadcast is missed. Failed keys are throttled per client address and in
total (:class:`AuthThrottle`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
from dataclasses import dataclass

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import ColumnElement, insert, select, update
from sqlalchemy.exc import IntegrityError

from herald import names
from herald.domain import utcnow
from herald.errors import HeraldError
from herald.ids import new_id
from herald.logs import get_logger
from herald.storage.db import SessionFactory
from herald.storage.models import ApiKey
from ratelimit import Decision, Limit, MemoryRateLimiter, RateLimitBackendError, RateLimiter
from ratelimit.guard import FALLBACKS

log = get_logger(__name__)
AUTH_REFUSED = Counter(
    "herald_auth_refused_total",
    "API keys and console sign-ins refused: unknown or revoked, or throttled unchecked",
    ["reason"],
)
#: How long a key that worked stays known: from a throttled address it is still checked.
KNOWN_KEY_S = 3600.0

SCOPES = frozenset(
    {"send", "otp", "dlq:read", "dlq:write", "routing:read", "routing:write", "sandbox", "admin"}
)
KEY_PREFIX = "hk_"


@dataclass(frozen=True, slots=True)
class Principal:
    id: str
    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyNotFound(HeraldError):
    """No key has that id, or no active key that name."""


class AmbiguousKey(HeraldError):
    """The text is one key's id and another's name: revoke by the id of the one meant."""

    def __init__(self, name: str, ids: list[str]) -> None:
        super().__init__(f"{name!r} names {len(ids)} keys (ids {', '.join(ids)})")
        self.ids = ids


@dataclass(frozen=True, slots=True)
class Revoked:
    id: str
    name: str
    already: bool  # it was revoked before this call


class KeyStore:
    """Looks keys up by hash, caching hits briefly so auth costs no query per request.

    A revoked key keeps working for at most ``cache_s`` seconds in a running process
    that missed the revocation broadcast (:meth:`listen`); at once in the others.
    """

    def __init__(self, sessions: SessionFactory, *, cache_s: float = 5.0) -> None:
        self.sessions = sessions
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, Principal]] = {}
        #: Digests of keys that worked lately → (until, key id): see ``known``.
        self._known: dict[str, tuple[float, str]] = {}
        #: Lookups in flight by digest: when a cached key expires under load, the
        #: requests holding it share one query instead of each making its own.
        self._lookups: dict[str, asyncio.Future[Principal | None]] = {}
        self._listener: asyncio.Task[None] | None = None

    def cached(self, key: str) -> Principal | None:
        """The key's principal if this process looked it up within ``cache_s`` (no I/O)."""
        hit = self._cache.get(hash_key(key))
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        return None

    def known(self, key: str) -> bool:
        """Whether the key worked here within the last hour: a throttled address may still
        have it checked (a guess is never known, a client's own key usually is)."""
        seen = self._known.get(hash_key(key))
        return seen is not None and seen[0] > time.monotonic()

    async def authenticate(self, key: str) -> Principal | None:
        principal = self.cached(key)
        if principal is not None:
            return principal
        digest = hash_key(key)
        in_flight = self._lookups.get(digest)
        if in_flight is not None:
            return await asyncio.shield(in_flight)
        lookup: asyncio.Future[Principal | None] = asyncio.get_running_loop().create_future()
        self._lookups[digest] = lookup
        try:
            principal = await self._look_up(digest)
        except asyncio.CancelledError:
            lookup.cancel()
            raise
        except Exception as exc:
            lookup.set_exception(exc)
            lookup.exception()  # retrieved: nobody may be waiting for it
            raise
        else:
            lookup.set_result(principal)
            return principal
        finally:
            del self._lookups[digest]

    async def _look_up(self, digest: str) -> Principal | None:
        principal = await self._active(ApiKey.key_hash == digest)
        if principal is None:
            self._cache.pop(digest, None)
            self._known.pop(digest, None)
            return None
        now = time.monotonic()
        self._cache[digest] = (now + self.cache_s, principal)
        self._remember(digest, principal.id, now)
        return principal

    def _remember(self, digest: str, key_id: str, now: float) -> None:
        """Keys that work are few (one per row of api_keys): sweep expired ones now and then."""
        if len(self._known) > 10_000:
            self._known = {d: seen for d, seen in self._known.items() if seen[0] > now}
        self._known[digest] = (now + KNOWN_KEY_S, key_id)

    def forget(self, key_id: str) -> None:
        """Drop a (revoked) key from this process's caches."""
        self._cache = {d: hit for d, hit in self._cache.items() if hit[1].id != key_id}
        self._known = {d: seen for d, seen in self._known.items() if seen[1] != key_id}

    async def revoke(self, id_or_name: str) -> Revoked:
        """Revoke a key by id, or by name when exactly one active key has it."""
        async with self.sessions.begin() as session:
            rows = (
                await session.execute(
                    select(ApiKey.id, ApiKey.name, ApiKey.revoked_at).where(
                        (ApiKey.id == id_or_name)
                        | ((ApiKey.name == id_or_name) & ApiKey.revoked_at.is_(None))
                    )
                )
            ).all()
            if not rows:
                raise KeyNotFound(f"no key with id {id_or_name!r} and no active key so named")
            if len(rows) > 1:  # one key's id is another's name
                raise AmbiguousKey(id_or_name, sorted(r.id for r in rows))
            row = rows[0]
            if row.revoked_at is None:
                await session.execute(
                    update(ApiKey)
                    .where(ApiKey.id == row.id, ApiKey.revoked_at.is_(None))
                    .values(revoked_at=utcnow())
                )
        self.forget(row.id)
        return Revoked(row.id, row.name, already=row.revoked_at is not None)

    @staticmethod
    async def announce_revoked(redis: Redis, key_id: str) -> bool:
        """Tell every process to drop the key now; False when Redis could not be told."""
        try:
            await redis.publish(names.KEYS_REVOKED_CHANNEL, key_id)
        except (RedisError, OSError) as exc:
            log.warning("key_revocation_not_broadcast", key_id=key_id, error=repr(exc))
            return False
        return True

    def listen(self, redis: Redis, *, retry_s: float = 1.0) -> None:
        """Drop keys revoked elsewhere as their broadcast arrives (until :meth:`stop`)."""
        self._listener = asyncio.create_task(self._listen(redis, retry_s))

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None

    async def _listen(self, redis: Redis, retry_s: float) -> None:
        while True:
            try:
                async with redis.pubsub() as pubsub:
                    await pubsub.subscribe(names.KEYS_REVOKED_CHANNEL)
                    # Subscribed: a broadcast missed while we were not is covered by
                    # cache_s, so the cache need not be cleared here.
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self.forget(message["data"].decode())
            except (RedisError, OSError) as exc:
                log.debug("key_revocations_lost", error=repr(exc))
                await asyncio.sleep(retry_s)

    async def by_id(self, key_id: str) -> Principal | None:
        """The key behind a console session, uncached: ``None`` once it is revoked."""
        return await self._active(ApiKey.id == key_id)

    async def _active(self, where: ColumnElement[bool]) -> Principal | None:
        async with self.sessions() as session:
            row = (
                await session.execute(
                    select(ApiKey.id, ApiKey.name, ApiKey.scopes, ApiKey.revoked_at).where(where)
                )
            ).first()
        if row is None or row.revoked_at is not None:
            return None
        return Principal(row.id, row.name, frozenset(row.scopes))

    async def create(self, name: str, scopes: list[str], *, key: str | None = None) -> str:
        unknown = set(scopes) - SCOPES
        if unknown:
            raise ValueError(f"unknown scopes: {', '.join(sorted(unknown))}")
        key = key or generate_key()
        async with self.sessions.begin() as session:
            await session.execute(
                insert(ApiKey).values(
                    id=new_id(),
                    name=name,
                    key_hash=hash_key(key),
                    scopes=sorted(scopes),
                    created_at=utcnow(),
                )
            )
        return key

    async def ensure(self, name: str, key: str, scopes: list[str]) -> None:
        """Create the bootstrap key unless it exists (safe when several processes start)."""
        async with self.sessions() as session:
            rows = (
                await session.execute(
                    select(ApiKey.key_hash, ApiKey.name).where(
                        (ApiKey.key_hash == hash_key(key)) | (ApiKey.name == name)
                    )
                )
            ).all()
        if any(row.key_hash == hash_key(key) for row in rows):
            return
        unique_name = f"{name}-{new_id()[-8:]}" if rows else name
        with contextlib.suppress(IntegrityError):  # another process created it first
            await self.create(unique_name, scopes, key=key)


class AuthThrottled(HeraldError):
    """Too many failed keys from this address (or overall): refused without a check."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"too many failed API keys; retry after {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


class AuthThrottle:
    """Failed keys per client address and in total, counted with GCRA.

    Only failures spend from the buckets. While either bucket is empty, a key that is
    not known to work (``KeyStore.known``) is refused with its wait, unchecked, so
    guessing keys (or a weak bootstrap key) from one address, or from many, is slow; the
    keys of clients that share the address keep working. Redis down: each process counts
    on its own (fail open, ``herald_ratelimit_fallback_total{policy="auth_failures"}``).
    """

    def __init__(
        self,
        shared: RateLimiter,
        *,
        per_client: Limit,
        overall: Limit,
        local: RateLimiter | None = None,
    ) -> None:
        self.shared = shared
        self.local = local or MemoryRateLimiter()
        self.per_client = per_client
        self.overall = overall

    def _buckets(self, subject: str) -> list[tuple[str, Limit]]:
        return [(f"auth-fail:client:{subject}", self.per_client), ("auth-fail:all", self.overall)]

    async def wait(self, subject: str) -> float:
        """Seconds until ``subject`` may have an unknown key checked again (0: now)."""
        waits = [
            (await self._decide(key, limit, spend=False)).retry_after_s
            for key, limit in self._buckets(subject)
        ]
        return max(waits)

    async def failed(self, subject: str) -> None:
        """Count one failed key against ``subject`` and the total."""
        for key, limit in self._buckets(subject):
            await self._decide(key, limit, spend=True)

    async def _decide(self, key: str, limit: Limit, *, spend: bool) -> Decision:
        try:
            if spend:
                return await self.shared.hit(key, limit)
            return await self.shared.peek(key, limit)
        except RateLimitBackendError:
            FALLBACKS.labels("auth_failures").inc()
            if spend:
                return await self.local.hit(key, limit)
            return await self.local.peek(key, limit)


async def check_key(
    keys: KeyStore, throttle: AuthThrottle, key: str, subject: str
) -> Principal | None:
    """The key's principal, or ``None`` (counted as a failure of ``subject``); raises
    :class:`AuthThrottled` for an unknown key while ``subject`` is throttled.

    A key cached as valid costs no I/O at all, so the send path pays nothing for this.
    """
    principal = keys.cached(key)
    if principal is not None:
        return principal
    if not keys.known(key):
        wait = await throttle.wait(subject)
        if wait > 0:
            AUTH_REFUSED.labels("throttled").inc()
            raise AuthThrottled(wait)
    principal = await keys.authenticate(key)
    if principal is None:
        AUTH_REFUSED.labels("unknown_key").inc()
        await throttle.failed(subject)
    return principal
