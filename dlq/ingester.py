"""Moves ``herald.dlq`` into the ``dead_letters`` table, once per notification generation.

Two kinds arrive: ours (a worker decided; reason and error in ``x-herald-*`` headers)
and RabbitMQ's own (a message hit the queue's delivery limit). Where no worker recorded
the outcome (RabbitMQ's, a crash, an outage past the deferral bound) we mark the
notification ``dead_lettered`` too.

Every message ends as a row: one that is no notification we hold (not JSON, not an
envelope, an unknown id) as an ``unreadable`` row with its raw bytes (dlq/unreadable.py),
and one our own code fails on likewise, with the error. The message is acked in one
place, after its row commits; a database outage puts it back after a pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Mapping
from typing import Any

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection
from sqlalchemy import select, update

from dlq.unreadable import clean, unreadable_row
from herald import metrics, names
from herald.domain import (
    TERMINAL_STATUSES,
    Category,
    DeadLetterReason,
    Envelope,
    EnvelopeError,
    Status,
    utcnow,
)
from herald.ids import new_id
from herald.logs import get_logger
from herald.readiness import NotConsuming, ensure_consuming
from herald.storage.db import SessionFactory, insert_ignoring_conflicts
from herald.storage.models import DeadLetter, Notification, table_of
from workers.poison import is_infrastructure

log = get_logger(__name__)
REDACTED = "[redacted]"
#: Reasons for which no worker wrote the status: the ingester marks it ``dead_lettered``.
UNRECORDED = frozenset({DeadLetterReason.CRASHED, DeadLetterReason.INFRASTRUCTURE})
#: How long the ingester waits before putting a message back when the database is down.
STORE_RETRY_PAUSE_S = 1.0


class Settle(enum.Enum):
    ACK = "ack"
    REQUEUE = "requeue"


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


def dead_letter_row(message: Envelope, headers: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """The row to store, and whether the notification's status must be set here (no
    worker recorded it: RabbitMQ dead-lettered it, or a worker crashed or gave up waiting)."""
    reason = _reason_of(headers)
    error: str | None
    code: str | None
    provider: str | None
    if reason is None:
        death = _text(headers.get("x-first-death-reason"), 40)
        if death is not None:
            error = f"RabbitMQ dead-lettered the message ({death}): workers failed to finish it"
        else:
            error = "arrived on herald.dlq without a worker's reason (published there directly?)"
        reason = DeadLetterReason.EXHAUSTED
        code = f"broker_{death}" if death else "no_reason"
        provider = None
        attempts = 0
    else:
        error = _text(headers.get("x-herald-error"), 1000)
        code = _text(headers.get("x-herald-error-code"), 64)
        provider = _text(headers.get("x-herald-provider"), 100)
        raw_attempts = headers.get("x-herald-attempts")
        attempts = raw_attempts if type(raw_attempts) is int and raw_attempts >= 0 else 0
    row = {
        "id": new_id(),
        "notification_id": message.id,
        "generation": message.generation,
        "channel": message.channel.value,
        "category": message.category.value,
        "caller": clean(message.caller, 100) if message.caller else None,
        "reason": reason.value,
        "last_error": error,
        "last_error_code": code,
        "last_provider": provider,
        "attempts": attempts,
        "state": "open",
        "payload": stored_payload(message),
        "dead_lettered_at": utcnow(),
    }
    mark = _reason_of(headers) is None or reason in UNRECORDED
    return row, mark


def _reason_of(headers: Mapping[str, Any]) -> DeadLetterReason | None:
    """A worker's reason header, if it names one of ours (else RabbitMQ's, or nobody's)."""
    value = headers.get(names.HEADER_DLQ_REASON)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    try:
        return DeadLetterReason(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _text(value: Any, limit: int) -> str | None:
    """A header as column text (at most ``limit`` characters, no NUL), or ``None``."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return clean(str(value), limit) or None


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
            # Bounded: with the broker link cut, a cancel would wait for the reconnect.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._queue.cancel(self._tag), timeout=2.0)
        self._tag = None

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        settle = await self.ingest(
            message.body,
            dict(message.headers or {}),
            message_id=message.message_id,
            routing_key=message.routing_key,
        )
        # The only place a dead letter is acked or put back.
        if settle is Settle.ACK:
            await message.ack()
        else:
            await message.nack(requeue=True)

    async def ingest(
        self,
        body: bytes,
        headers: Mapping[str, Any],
        *,
        message_id: str | None = None,
        routing_key: str | None = None,
    ) -> Settle:
        """Store one message of ``herald.dlq`` as a row; ``ACK`` once it is committed."""
        try:
            await self._store_message(body, headers, message_id, routing_key)
            return Settle.ACK
        except Exception as exc:  # an outage is retried, anything else stored
            if is_infrastructure(exc):
                return await self._pause(exc)
            log.exception("dead_letter_ingest_crashed", message_id=message_id)
            failure = exc
        # Our own code (or a row the database refused) failed on this message: keep it as
        # unreadable with that error, so one bad message never wedges the queue.
        row = unreadable_row(
            body,
            headers,
            message_id=message_id,
            routing_key=routing_key,
            error=f"the ingester failed on it: {type(failure).__name__}: {failure}",
            code="ingester_error",
        )
        try:
            await self._insert(row)
        except Exception as exc:  # last resort: keep it, retry later
            log.exception("dead_letter_unstorable", message_id=message_id)
            return await self._pause(exc)
        return Settle.ACK

    async def _pause(self, exc: BaseException) -> Settle:
        log.warning("dead_letter_store_failed", error=repr(exc))
        metrics.DEAD_LETTER_STORE_PAUSES.inc()
        await asyncio.sleep(STORE_RETRY_PAUSE_S)  # the database is down: do not spin
        return Settle.REQUEUE

    async def _store_message(
        self,
        body: bytes,
        headers: Mapping[str, Any],
        message_id: str | None,
        routing_key: str | None,
    ) -> None:
        def unreadable(error: str, code: str) -> dict[str, Any]:
            return unreadable_row(
                body,
                headers,
                message_id=message_id,
                routing_key=routing_key,
                error=error,
                code=code,
            )

        try:
            envelope = Envelope.from_bytes(body)
        except EnvelopeError as exc:
            # A worker's own parse error says the same; keep the worker's when it sent one.
            given = _text(headers.get("x-herald-error"), 1000)
            await self._insert(unreadable(given or str(exc), "bad_envelope"))
            return
        if _reason_of(headers) is DeadLetterReason.UNREADABLE:
            error = _text(headers.get("x-herald-error"), 1000) or "unreadable"
            code = _text(headers.get("x-herald-error-code"), 64) or "unreadable"
            await self._insert(unreadable(error, code))
            return
        stored = await self.store(envelope, headers)
        if not stored:
            error = f"no notification {envelope.id} in the database (never accepted here?)"
            await self._insert(unreadable(error, "unknown_notification"))

    async def _insert(self, row: dict[str, Any]) -> None:
        engine = self.sessions.kw["bind"]
        async with self.sessions.begin() as session:
            await session.execute(
                insert_ignoring_conflicts(engine, table_of(DeadLetter)).values(**row)
            )
        log.info("dead_letter_stored", reason=row["reason"], code=row["last_error_code"])

    async def store(self, envelope: Envelope, headers: Mapping[str, Any]) -> bool:
        """Store a readable dead letter; ``False`` (nothing stored) when the database holds
        no such notification."""
        row, mark = dead_letter_row(envelope, headers)
        engine = self.sessions.kw["bind"]
        async with self.sessions.begin() as session:
            if not await _notification_exists(session, envelope.id):
                return False
            await session.execute(
                insert_ignoring_conflicts(engine, table_of(DeadLetter)).values(**row)
            )
            if mark:
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
        if mark and row["reason"] not in UNRECORDED:  # the worker counted its own
            metrics.DEAD_LETTERED.labels(
                envelope.channel.value, envelope.category.value, row["reason"]
            ).inc()
        log.info("dead_letter_stored", notification_id=envelope.id, reason=row["reason"])
        return True


async def _notification_exists(session: Any, notification_id: str) -> bool:
    N = table_of(Notification)
    found = await session.execute(select(N.c.id).where(N.c.id == notification_id))
    return found.first() is not None
