"""Durable accept: the notification, its idempotency key and its outbox entry commit together.

Idempotency (DESIGN §4.3, the IETF Idempotency-Key draft): the same key from the same
caller within the TTL replays the first answer; a different body is ``422``; a request
still in flight is ``409``. Redis only gives the fast ``409``; the primary key of
``idempotency_keys`` is what guarantees one message, so it holds with Redis down.

Concurrent accepts are group-committed (:mod:`producer.group_commit`): one writer per
process inserts every queued request's rows in one transaction, and each request answers
only after that commit. Each key row is inserted with ``ON CONFLICT DO NOTHING``, so a key
already taken (by an earlier request, or by another row of the same batch) costs only its
own request a replay, never the batch.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, cast

import orjson
import sqlalchemy.exc
from prometheus_client import Histogram
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import delete, insert, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from config.settings import Settings
from herald import metrics, names
from herald.domain import Category, Envelope, Status, utcnow
from herald.ids import new_id
from herald.logs import get_logger
from herald.storage.db import SessionFactory, insert_ignoring_conflicts
from herald.storage.models import IdempotencyKey, Notification, OutboxEntry, table_of
from producer.auth import Principal
from producer.group_commit import GroupCommit
from producer.outbox import Outbox
from producer.problems import Problem
from producer.validation import ValidSend

log = get_logger(__name__)
REDACTED = "[redacted]"
NOTIFICATIONS = table_of(Notification)
OUTBOX = table_of(OutboxEntry)
KEYS = table_of(IdempotencyKey)
BATCH_ROWS = Histogram(
    "herald_accept_batch_rows",
    "Send API: requests committed together in one transaction",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)

#: What a lost, refused or busy database raises: the whole batch shares such a failure,
#: so its rows are not retried one by one (each would wait out the same deadline).
DATABASE_DOWN: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    ConnectionError,
    OSError,
)


def database_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, DATABASE_DOWN)


@dataclass(frozen=True, slots=True)
class Accepted:
    id: str
    status: str
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class AcceptRow:
    """One request's rows, as the writer inserts them (column names, not attributes)."""

    notification: dict[str, Any]
    outbox: dict[str, Any]
    key: dict[str, Any] | None  # the idempotency key row, when the request had one

    @property
    def notification_id(self) -> str:
        return cast(str, self.notification["id"])


class _KeyTaken:
    """The request's idempotency key was already stored: nothing of it was written."""


KEY_TAKEN: Final = _KeyTaken()


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
        #: The writer's engine: batches run on a Core connection, without ORM sessions.
        self.engine = cast(AsyncEngine, sessions.kw["bind"])
        self.redis = redis
        self.outbox = outbox
        self.settings = settings
        self.writer: GroupCommit[AcceptRow, int | _KeyTaken] = GroupCommit(
            self._write,
            wait_s=settings.database_wait_s,
            shared_failure=database_unavailable,
            on_batch=BATCH_ROWS.observe,
        )

    async def accept(
        self,
        principal: Principal,
        send: ValidSend,
        *,
        idempotency_key: str | None,
        fingerprint: str | None,
    ) -> Accepted:
        """Store the notification durably (or replay the first answer for its key).

        A caller with a key has already looked for an earlier answer (``previous``); one
        committed since is found by the key's conflict, so it is not looked up again here.
        """
        if idempotency_key is None:
            return await self._insert(principal, send, None, None)
        assert fingerprint is not None
        lock = names.idempotency_lock_key(principal.id, idempotency_key)
        try:
            locked = bool(await self.redis.set(lock, b"1", nx=True, px=30_000))
            in_flight = not locked
        except RedisError:
            locked = in_flight = False  # no fast 409; the database still keeps it to one message
        if in_flight:
            raise _in_flight()
        try:
            return await self._insert(principal, send, idempotency_key, fingerprint)
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
            country=send.country,
        )
        payload = envelope.to_bytes()
        routing_key = envelope.routing_key
        publish_now = send.send_at is None
        available_at: datetime = (
            now + timedelta(seconds=self.settings.outbox_relay_after_s)
            if publish_now
            else send.send_at  # type: ignore[assignment]
        )
        row = AcceptRow(
            notification={
                "id": notification_id,
                "api_key_id": principal.id,
                "caller": principal.name,
                "channel": send.channel.value,
                "to_address": send.to,
                "category": send.category.value,
                "priority": send.priority.value,
                "subject": send.subject,
                "body": stored_body(send),
                "data": send.data,
                "metadata": send.metadata,
                "status": Status.ACCEPTED.value,
                "generation": 0,
                "attempt_count": 0,
                "expires_at": send.expires_at,
                "send_at": send.send_at,
                "created_at": now,
                "updated_at": now,
            },
            outbox={
                "notification_id": notification_id,
                "routing_key": routing_key,
                "payload": payload,
                "created_at": now,
                "available_at": available_at,
                "publish_attempts": 0,
            },
            key=None
            if key is None
            else {
                "api_key_id": principal.id,
                "key": key,
                "request_hash": fingerprint,
                "notification_id": notification_id,
                "created_at": now,
            },
        )
        entry_id = await self.writer.submit(row)
        if isinstance(entry_id, _KeyTaken):
            assert key is not None and fingerprint is not None
            previous = await self.previous(principal.id, key, fingerprint)
            if previous is None:  # taken, then gone (expired) in between: let them retry
                raise _in_flight()
            return previous
        metrics.ACCEPTED.labels(send.channel.value, send.category.value).inc()
        if publish_now:
            self.outbox.publish_soon(entry_id, notification_id, routing_key, payload)
        return Accepted(notification_id, Status.ACCEPTED.value)

    # -- the writer: one transaction for a whole batch ----------------------------------

    async def _write(self, rows: Sequence[AcceptRow]) -> list[int | _KeyTaken]:
        """Insert the batch in one transaction: the outbox id of each row, or KEY_TAKEN."""
        async with self.engine.begin() as conn:
            taken = await self._claim_keys(conn, rows)
            live = [row for i, row in enumerate(rows) if i not in taken]
            entry_ids: dict[str, int] = {}
            if live:
                await conn.execute(insert(NOTIFICATIONS), [row.notification for row in live])
                result = await conn.execute(
                    insert(OUTBOX).returning(OUTBOX.c.id, OUTBOX.c.notification_id),
                    [row.outbox for row in live],
                )
                entry_ids = {notification_id: entry_id for entry_id, notification_id in result}
        return [
            KEY_TAKEN if i in taken else entry_ids[row.notification_id]
            for i, row in enumerate(rows)
        ]

    async def _claim_keys(self, conn: AsyncConnection, rows: Sequence[AcceptRow]) -> set[int]:
        """Insert the batch's idempotency keys; the indexes of rows whose key was taken.

        The first row of the batch with a key wins it; a key stored before counts only
        while it is within the TTL (an expired one is deleted and the key inserted anew).
        """
        first: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        taken: set[int] = set()
        for i, row in enumerate(rows):
            if row.key is None:
                continue
            ident = (row.key["api_key_id"], row.key["key"])
            if ident in first:
                taken.add(i)
            else:
                first[ident] = (i, row.key)
        if not first:
            return taken
        claim = insert_ignoring_conflicts(self.engine, KEYS)
        claim = claim.returning(KEYS.c.api_key_id, KEYS.c.key)
        claimed = await conn.execute(claim, [key for _, key in first.values()])
        won = {tuple(r) for r in claimed}
        stale = [ident for ident in first if ident not in won]
        if stale:
            cutoff = utcnow() - timedelta(seconds=self.settings.idempotency_ttl_s)
            await conn.execute(
                delete(KEYS).where(
                    tuple_(KEYS.c.api_key_id, KEYS.c.key).in_(stale), KEYS.c.created_at < cutoff
                )
            )
            again = await conn.execute(claim, [first[ident][1] for ident in stale])
            won |= {tuple(r) for r in again}
        taken.update(i for ident, (i, _) in first.items() if ident not in won)
        return taken


def _in_flight() -> Problem:
    return Problem(
        409,
        "Request in progress",
        "a request with this Idempotency-Key is still being processed; retry shortly",
        errors=[{"field": "Idempotency-Key", "message": "is in use by a request in flight"}],
        headers={"Retry-After": "1"},
    )
