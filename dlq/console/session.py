"""Console sign-in sessions and CSRF tokens.

The cookie holds the API key's *id* (never the key) and a random nonce, signed and
timestamped with itsdangerous; every request looks the key up again, so a revoked key
or a changed scope takes effect at once. The server also keeps each live session in
Redis (by a hash of its nonce, with the session's lifetime as TTL) and deletes it at
sign-out, so a copied cookie stops working when its owner signs out. The CSRF token is
an HMAC of the nonce: a page can only carry it if the server rendered it for this session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer
from redis.asyncio import Redis
from redis.exceptions import RedisError

from herald import names

COOKIE = "herald_console"
#: Set by the sign-in page so the sign-in form itself is CSRF-protected (double submit).
LOGIN_COOKIE = "herald_console_login"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    key_id: str
    nonce: str


class SessionCodec:
    def __init__(self, secret: bytes, *, max_age_s: int) -> None:
        self._secret = secret
        self.max_age_s = max_age_s
        self._signer = URLSafeTimedSerializer(secret, salt="herald-console-session")

    def issue(self, session: ConsoleSession) -> str:
        return str(self._signer.dumps({"k": session.key_id, "n": session.nonce}))

    def read(self, cookie: str | None) -> ConsoleSession | None:
        if not cookie:
            return None
        try:
            data = self._signer.loads(cookie, max_age=self.max_age_s)
        except BadSignature:  # also a SignatureExpired
            return None
        if not isinstance(data, dict):
            return None
        key_id, nonce = data.get("k"), data.get("n")
        if not (isinstance(key_id, str) and isinstance(nonce, str) and nonce):
            return None
        return ConsoleSession(key_id=key_id, nonce=nonce)

    def csrf_token(self, session: ConsoleSession) -> str:
        return hmac.new(self._secret, f"csrf:{session.nonce}".encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: ConsoleSession, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token(session), str(token))


class SessionsUnavailable(Exception):
    """Redis cannot say whether a session is live: the console fails closed."""


class SessionStore:
    """The live sessions, in Redis: one key per session (a hash of its nonce, never the
    nonce) holding the API key's id, expiring with the cookie."""

    def __init__(self, redis: Redis, *, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s

    async def start(self, key_id: str) -> ConsoleSession:
        session = ConsoleSession(key_id=key_id, nonce=secrets.token_urlsafe(24))
        try:
            await self.redis.set(_redis_key(session), key_id, ex=self.ttl_s)
        except (RedisError, OSError) as exc:
            raise SessionsUnavailable(str(exc)) from exc
        return session

    async def active(self, session: ConsoleSession) -> bool:
        """Whether this session was started here and not ended (nor expired) since."""
        try:
            stored = await self.redis.get(_redis_key(session))
        except (RedisError, OSError) as exc:
            raise SessionsUnavailable(str(exc)) from exc
        return isinstance(stored, bytes) and hmac.compare_digest(stored, session.key_id.encode())

    async def end(self, session: ConsoleSession) -> None:
        try:
            await self.redis.delete(_redis_key(session))
        except (RedisError, OSError) as exc:
            raise SessionsUnavailable(str(exc)) from exc


def _redis_key(session: ConsoleSession) -> str:
    return names.console_session_key(hashlib.sha256(session.nonce.encode()).hexdigest())
