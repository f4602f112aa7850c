"""Durable accept: the notification, its idempotency key and its outbox entry commit together.

Idempotency (DESIGN §4.3, the IETF Idempotency-Key draft): the same key from the same
caller within the TTL replays the first answer; a different body is ``422``; a request
still in flight is ``409``. Redis only gives the fast ``409``; the primary key of
``idempotency_keys`` is what guarantees one message, so it holds with Redis down.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from config.settings import Settings
from herald import metrics, names
from herald.domain import Category, Envelope, Status, utcnow
from herald.ids import new_id
from herald.logs import get_logger
from herald.storage.db import SessionFactory, inserted_id
from herald.storage.models import IdempotencyKey, Notification, OutboxEntry
from producer.auth import Principal
from producer.outbox import Outbox
from producer.problems import Problem
from producer.validation import ValidSend

log = get_logger(__name__)
REDACTED = "[redacted]"


@dataclass(frozen=True, slots=True)
class Accepted:
    id: str
    status: str
    replayed: bool = False


def request_fingerprint(payload: dict[str, object]) -> str:
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


def stored_body(send: ValidSend) -> str | None:
    """OTP bodies carry the code: the database only ever sees them redacted."""
    return REDACTED if send.category is Category.OTP else send.body


class AcceptService:
    def __init__(
        self, sessions: SessionFactory, redis: Redis, outbox: Outbox, settings: Settings
    ) -> None:
        self.sessions = sessions
        self.redis = redis
        self.outbox = outbox
        self.settings = settings

    async def accept(
        self,
        principal: Principal,
        send: ValidSend,
        *,
        idempotency_key: str | None,
        fingerprint: str | None,
    ) -> Accepted:
        if idempotency_key is None:
            return await self._insert(principal, send, None, None)
        assert fingerprint is not None
        previous = await self.previous(principal.id, idempotency_key, fingerprint)
        if previous is not None:
            return previous
        lock = names.idempotency_lock_key(principal.id, idempotency_key)
        try:
            locked = bool(await self.redis.set(lock, b"1", nx=True, px=30_000))
            in_flight = not locked
        except RedisError:
            locked = in_flight = False  # no fast 409; the database still keeps it to one message
        if in_flight:
            raise Problem(
                409,
                "Request in progress",
                "a request with this Idempotency-Key is still being processed; retry shortly",
                errors=[
                    {"field": "Idempotency-Key", "message": "is in use by a request in flight"}
                ],
                headers={"Retry-After": "1"},
            )
        try:
            return await self._insert(principal, send, idempotency_key, fingerprint)
        except IntegrityError:
            previous = await self.previous(principal.id, idempotency_key, fingerprint)
            if previous is None:
                raise
            return previous
        finally:
            if locked:
                with contextlib.suppress(RedisError):  # it expires on its own
                    await self.redis.delete(lock)

    async def previous(self, api_key_id: str, key: str, fingerprint: str) -> Accepted | None:
        """The first answer given for this key (a replay), None if new; 422 on another body."""
        cutoff = utcnow() - timedelta(seconds=self.settings.idempotency_ttl_s)
        async with self.sessions() as session:
            row = (
                await session.execute(
                    select(
                        IdempotencyKey.request_hash,
                        IdempotencyKey.notification_id,
                        Notification.status,
                    )
                    .join(Notification, Notification.id == IdempotencyKey.notification_id)
                    .where(
                        IdempotencyKey.api_key_id == api_key_id,
                        IdempotencyKey.key == key,
                        IdempotencyKey.created_at >= cutoff,
                    )
                )
            ).first()
        if row is None:
            return None
        if row.request_hash != fingerprint:
            raise Problem(
                422,
                "Idempotency-Key reused",
                "this Idempotency-Key was already used with a different request body",
                errors=[
                    {"field": "Idempotency-Key", "message": "was used with a different request"}
                ],
            )
        return Accepted(row.notification_id, Status.ACCEPTED.value, replayed=True)

    async def _insert(
        self, principal: Principal, send: ValidSend, key: str | None, fingerprint: str | None
    ) -> Accepted:
        now = utcnow()
        notification_id = new_id()
        envelope = Envelope(
            id=notification_id,
            channel=send.channel,
            to=send.to,
            category=send.category,
            priority=send.priority,
            body=send.body,
            subject=send.subject,
            data=send.data,
            metadata=send.metadata,
            expires_at=send.expires_at,
            caller=principal.name,
            otp_id=send.otp_id,
        )
        payload = envelope.to_bytes()
        publish_now = send.send_at is None
        available_at: datetime = (
            now + timedelta(seconds=self.settings.outbox_relay_after_s)
            if publish_now
            else send.send_at  # type: ignore[assignment]
        )
        async with self.sessions.begin() as session:
            if key is not None:
                cutoff = now - timedelta(seconds=self.settings.idempotency_ttl_s)
                await session.execute(
                    delete(IdempotencyKey).where(
                        IdempotencyKey.api_key_id == principal.id,
                        IdempotencyKey.key == key,
                        IdempotencyKey.created_at < cutoff,
                    )
                )
                await session.execute(
                    insert(IdempotencyKey).values(
                        api_key_id=principal.id,
                        key=key,
                        request_hash=fingerprint,
                        notification_id=notification_id,
                        created_at=now,
                    )
                )
            await session.execute(
                insert(Notification).values(
                    id=notification_id,
                    api_key_id=principal.id,
                    caller=principal.name,
                    channel=send.channel.value,
                    to=send.to,
                    category=send.category.value,
                    priority=send.priority.value,
                    subject=send.subject,
                    body=stored_body(send),
                    data=send.data,
                    meta=send.metadata,
                    status=Status.ACCEPTED.value,
                    generation=0,
                    attempt_count=0,
                    expires_at=send.expires_at,
                    send_at=send.send_at,
                    created_at=now,
                    updated_at=now,
                )
            )
            result = await session.execute(
                insert(OutboxEntry).values(
                    notification_id=notification_id,
                    routing_key=envelope.routing_key,
                    payload=payload,
                    created_at=now,
                    available_at=available_at,
                    publish_attempts=0,
                )
            )
            entry_id = inserted_id(result)
        metrics.ACCEPTED.labels(send.channel.value, send.category.value).inc()
        if publish_now:
            self.outbox.publish_soon(entry_id, notification_id, envelope.routing_key, payload)
        return Accepted(notification_id, Status.ACCEPTED.value)
