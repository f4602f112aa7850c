"""API keys: stored as SHA-256 hashes (the keys are random, so no slow hash is needed)."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import ColumnElement, insert, select
from sqlalchemy.exc import IntegrityError

from herald.domain import utcnow
from herald.ids import new_id
from herald.storage.db import SessionFactory
from herald.storage.models import ApiKey

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


class KeyStore:
    """Looks keys up by hash, caching hits briefly so auth costs no query per request.

    A revoked key keeps working for at most ``cache_s`` seconds in a running process.
    """

    def __init__(self, sessions: SessionFactory, *, cache_s: float = 30.0) -> None:
        self.sessions = sessions
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, Principal]] = {}

    async def authenticate(self, key: str) -> Principal | None:
        digest = hash_key(key)
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        principal = await self._active(ApiKey.key_hash == digest)
        if principal is None:
            self._cache.pop(digest, None)
            return None
        self._cache[digest] = (time.monotonic() + self.cache_s, principal)
        return principal

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
