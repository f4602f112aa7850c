"""Delivery receipts: a vendor tells us a message reached the handset (or did not).

Receipts arrive late, twice, or for messages we never sent; each is applied at most once
and only to a message that is ``sent``: anything else is accepted and ignored, so a
vendor never retries a receipt because of us.
"""

from __future__ import annotations

import enum

from sqlalchemy import select, update

from herald.domain import Category, Channel, Envelope, Priority, Status, utcnow
from herald.logs import get_logger
from herald.storage.db import SessionFactory
from herald.storage.models import Notification, table_of
from workers.events import EventPublisher

log = get_logger(__name__)
N = table_of(Notification)


class ReceiptResult(enum.StrEnum):
    APPLIED = "applied"
    UNKNOWN = "unknown"  # no message with that vendor id from that provider
    IGNORED = "ignored"  # already final, or not sent yet


class ReceiptRecorder:
    def __init__(self, sessions: SessionFactory, events: EventPublisher) -> None:
        self.sessions = sessions
        self.events = events

    async def apply(
        self,
        provider: str,
        vendor_message_id: str,
        *,
        delivered: bool,
        error_code: str | None = None,
        error: str | None = None,
    ) -> ReceiptResult:
        status = Status.DELIVERED if delivered else Status.UNDELIVERED
        async with self.sessions.begin() as session:
            row = (
                await session.execute(
                    select(
                        N.c.id, N.c.status, N.c.channel, N.c.category, N.c.priority, N.c.to_address
                    )
                    .where(N.c.vendor_message_id == vendor_message_id)
                    .where(N.c.last_provider == provider)
                )
            ).first()
            if row is None:
                return ReceiptResult.UNKNOWN
            values: dict[str, object] = {"status": status.value, "updated_at": utcnow()}
            if not delivered:
                values["last_error"] = error or "the vendor reports it undelivered"
                values["last_error_code"] = error_code
            changed = await session.execute(
                update(N).where(N.c.id == row.id, N.c.status == Status.SENT.value).values(**values)
            )
            if not changed.rowcount:  # type: ignore[attr-defined]
                return ReceiptResult.IGNORED
        log.info("receipt_applied", notification_id=row.id, provider=provider, status=status.value)
        envelope = Envelope(
            id=row.id,
            channel=Channel(row.channel),
            to=row.to_address,
            category=Category(row.category),
            priority=Priority(row.priority),
        )
        await self.events.publish(status.value, envelope, provider=provider, error_code=error_code)
        return ReceiptResult.APPLIED
