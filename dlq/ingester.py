"""Moves ``herald.dlq`` into the ``dead_letters`` table, once per notification generation.

Two kinds arrive: ours (a worker decided; reason and error in ``x-herald-*`` headers)
and RabbitMQ's own (a message hit the queue's delivery limit, e.g. a poison message
that crashed workers); for those we mark the notification ``dead_lettered`` too.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import sqlalchemy.exc
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection
from sqlalchemy import update

from herald import metrics, names
from herald.domain import (
    TERMINAL_STATUSES,
    Category,
    DeadLetterReason,
    Envelope,
    Status,
    utcnow,
)
from herald.ids import new_id
from herald.logs import get_logger
from herald.readiness import NotConsuming, ensure_consuming
from herald.storage.db import SessionFactory, insert_ignoring_conflicts
from herald.storage.models import DeadLetter, Notification, table_of

log = get_logger(__name__)
REDACTED = "[redacted]"


def stored_payload(message: Envelope) -> dict[str, Any]:
    """The envelope as kept for the console; OTP bodies never reach the database."""
    payload = {
        "to": message.to,
        "channel": message.channel.value,
        "category": message.category.value,
        "priority": message.priority.value,
        "subject": message.subject,
        "body": REDACTED if message.category is Category.OTP else message.body,
        "template": message.template,
        "data": message.data,
        "metadata": message.metadata,
        "expires_at": message.expires_at.isoformat() if message.expires_at else None,
        "generation": message.generation,
        "otp_id": message.otp_id,
    }
    return payload


def dead_letter_row(message: Envelope, headers: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The row to store, and whether RabbitMQ (not a worker) dead-lettered it."""
    reason = headers.get(names.HEADER_DLQ_REASON)
    by_broker = reason is None
    error: str | None
    code: str | None
    provider: str | None
    if by_broker:
        death = str(headers.get("x-first-death-reason", "delivery_limit"))
        reason = DeadLetterReason.EXHAUSTED.value
        error = f"RabbitMQ dead-lettered the message ({death}): workers failed to finish it"
        code = f"broker_{death}"
        provider = None
        attempts = 0
    else:
        error = str(headers.get("x-herald-error") or "") or None
        code = str(headers.get("x-herald-error-code") or "") or None
        provider = str(headers.get("x-herald-provider") or "") or None
        attempts = int(headers.get("x-herald-attempts") or 0)
    row = {
        "id": new_id(),
        "notification_id": message.id,
        "generation": message.generation,
        "channel": message.channel.value,
        "category": message.category.value,
        "caller": message.caller,
        "reason": str(reason),
        "last_error": error,
        "last_error_code": code,
        "last_provider": provider,
        "attempts": attempts,
        "state": "open",
        "payload": stored_payload(message),
        "dead_lettered_at": utcnow(),
    }
    return row, by_broker


class DeadLetterIngester:
    def __init__(self, connection: AbstractRobustConnection, sessions: SessionFactory) -> None:
        self.connection = connection
        self.sessions = sessions
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None

    async def start(self) -> None:
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=50)
        # declare_queue (not get_queue) registers it for restore after a reconnect.
        self._queue = await channel.declare_queue(names.DLQ, passive=True)
        self._tag = await self._queue.consume(self._on_message, no_ack=False)

    async def ensure_consuming(self) -> None:
        """Readiness: raise unless the ingester's consumer is attached to ``herald.dlq``."""
        if self._queue is None or self._tag is None:
            raise NotConsuming("dead-letter ingester not consuming")
        await ensure_consuming([(self._queue, self._tag)])

    async def stop(self) -> None:
        if self._queue is not None and self._tag is not None:
            with contextlib.suppress(Exception):
                await self._queue.cancel(self._tag)
        self._tag = None

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            envelope = Envelope.from_bytes(message.body)
        except (ValueError, KeyError) as exc:
            log.error("dead_letter_unreadable", error=repr(exc), message_id=message.message_id)
            await message.ack()  # nothing to store; keeping it would loop forever
            return
        try:
            await self.store(envelope, dict(message.headers or {}))
        except (sqlalchemy.exc.SQLAlchemyError, OSError) as exc:
            log.warning("dead_letter_store_failed", notification_id=envelope.id, error=repr(exc))
            await asyncio.sleep(1)  # the database is down: do not spin
            await message.nack(requeue=True)
            return
        await message.ack()

    async def store(self, envelope: Envelope, headers: dict[str, Any]) -> None:
        row, by_broker = dead_letter_row(envelope, headers)
        engine = self.sessions.kw["bind"]
        async with self.sessions.begin() as session:
            await session.execute(
                insert_ignoring_conflicts(engine, table_of(DeadLetter)).values(**row)
            )
            if by_broker:
                await session.execute(
                    update(table_of(Notification))
                    .where(
                        table_of(Notification).c.id == envelope.id,
                        table_of(Notification).c.status.not_in(
                            [s.value for s in TERMINAL_STATUSES]
                        ),
                    )
                    .values(
                        status=Status.DEAD_LETTERED.value,
                        last_error=row["last_error"],
                        last_error_code=row["last_error_code"],
                        updated_at=utcnow(),
                    )
                )
                metrics.DEAD_LETTERED.labels(
                    envelope.channel.value, envelope.category.value, row["reason"]
                ).inc()
        log.info("dead_letter_stored", notification_id=envelope.id, reason=row["reason"])
