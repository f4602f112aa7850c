"""What the delivery loop reads and writes in the database (SQLAlchemy Core, one txn each)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from herald.domain import TERMINAL_STATUSES, AttemptOutcome, Status, utcnow
from herald.storage.db import SessionFactory, inserted_id
from herald.storage.models import Attempt, Notification, OutboxEntry, table_of

N = table_of(Notification)
A = table_of(Attempt)
OUTBOX = table_of(OutboxEntry)


@dataclass(frozen=True, slots=True)
class PendingAttempt:
    """An attempt left in ``sending``: a worker died between the vendor call and its record."""

    id: int
    provider: str
    attempt_no: int


@dataclass(frozen=True, slots=True)
class Begun:
    attempt_id: int
    attempt_no: int


@dataclass(frozen=True, slots=True)
class Skip:
    """Nothing to send: the row is missing, terminal, or from an older generation."""

    status: Status | None
    reason: str


@dataclass(frozen=True, slots=True)
class Interrupted:
    pending: PendingAttempt
    attempt_count: int


#: Set in the task delivering a high-priority message (an OTP): its database work skips
#: the bulk queue, so it never waits behind a backlog of marketing messages.
URGENT: contextvars.ContextVar[bool] = contextvars.ContextVar("herald_urgent", default=False)


class DeliveryStore:
    def __init__(self, sessions: SessionFactory, *, bulk_slots: int = 2) -> None:
        # Core connections, not ORM sessions: this is the hot path and holds no objects.
        self.engine: AsyncEngine = sessions.kw["bind"]
        self._bulk = asyncio.Semaphore(bulk_slots)

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """Bulk work takes one of a few slots; urgent work goes straight to the pool."""
        if URGENT.get():
            yield
            return
        async with self._bulk:
            yield

    async def begin(
        self,
        notification_id: str,
        generation: int,
        provider: str,
        now: datetime,
        rules_version: int | None = None,
    ) -> Begun | Skip | Interrupted:
        """Check the row and, when a send is due, write the attempt (``sending``) first."""
        async with self._turn(), self.engine.begin() as session:
            row = (
                await session.execute(
                    select(N.c.status, N.c.generation, N.c.attempt_count).where(
                        N.c.id == notification_id
                    )
                )
            ).first()
            if row is None:
                return Skip(None, "missing")
            status = Status(row.status)
            if row.generation != generation:
                return Skip(status, "stale_generation")
            if status.is_terminal:
                return Skip(status, "terminal")
            if status is Status.SENDING:
                pending = (
                    await session.execute(
                        select(A.c.id, A.c.provider, A.c.attempt_no)
                        .where(
                            A.c.notification_id == notification_id,
                            A.c.generation == generation,
                            A.c.outcome == AttemptOutcome.SENDING.value,
                        )
                        .order_by(A.c.id.desc())
                        .limit(1)
                    )
                ).first()
                if pending is not None:
                    return Interrupted(
                        PendingAttempt(pending.id, pending.provider, pending.attempt_no),
                        row.attempt_count,
                    )
            attempt_no = row.attempt_count + 1
            attempt_id = await self._insert_attempt(
                session, notification_id, generation, attempt_no, provider, now, rules_version
            )
            return Begun(attempt_id, attempt_no)

    async def start_attempt(
        self, notification_id: str, generation: int, attempt_no: int, provider: str, now: datetime
    ) -> int:
        async with self._turn(), self.engine.begin() as session:
            return await self._insert_attempt(
                session, notification_id, generation, attempt_no, provider, now
            )

    async def _insert_attempt(
        self,
        session: AsyncConnection,
        notification_id: str,
        generation: int,
        attempt_no: int,
        provider: str,
        now: datetime,
        rules_version: int | None = None,
    ) -> int:
        result = await session.execute(
            insert(A).values(
                notification_id=notification_id,
                generation=generation,
                attempt_no=attempt_no,
                provider=provider,
                outcome=AttemptOutcome.SENDING.value,
                started_at=now,
            )
        )
        values: dict[str, object] = {
            "status": Status.SENDING.value,
            "attempt_count": attempt_no,
            "updated_at": now,
            "last_provider": provider,
        }
        if rules_version is not None:
            values["rules_version"] = rules_version
        await session.execute(update(N).where(N.c.id == notification_id).values(**values))
        return inserted_id(result)

    async def finish(
        self,
        *,
        notification_id: str,
        attempt_id: int,
        outcome: AttemptOutcome,
        status: Status,
        now: datetime,
        latency_ms: float | None,
        vendor_message_id: str | None = None,
        error: str | None = None,
        error_code: str | None = None,
    ) -> None:
        """Record one attempt's outcome and the notification's new status together."""
        async with self._turn(), self.engine.begin() as session:
            await session.execute(
                update(A)
                .where(A.c.id == attempt_id)
                .values(
                    outcome=outcome.value,
                    finished_at=now,
                    latency_ms=latency_ms,
                    vendor_message_id=vendor_message_id,
                    error=error,
                    error_code=error_code,
                )
            )
            values: dict[str, object] = {"status": status.value, "updated_at": now}
            if vendor_message_id is not None:
                values["vendor_message_id"] = vendor_message_id
            if error is not None:
                values["last_error"] = error
                values["last_error_code"] = error_code
            await session.execute(update(N).where(N.c.id == notification_id).values(**values))

    async def set_status(
        self,
        notification_id: str,
        status: Status,
        now: datetime,
        *,
        error: str | None = None,
        error_code: str | None = None,
        only_if_not_terminal: bool = False,
    ) -> bool:
        async with self._turn(), self.engine.begin() as session:
            stmt = update(N).where(N.c.id == notification_id)
            if only_if_not_terminal:
                stmt = stmt.where(N.c.status.not_in([s.value for s in TERMINAL_STATUSES]))
            values: dict[str, object] = {"status": status.value, "updated_at": now}
            if error is not None:
                values["last_error"] = error
                values["last_error_code"] = error_code
            result = await session.execute(stmt.values(**values))
            return bool(cast(CursorResult[Any], result).rowcount)

    async def dead_letter_details(self, notification_id: str) -> dict[str, object] | None:
        async with self._turn(), self.engine.connect() as session:
            row = (
                await session.execute(
                    select(
                        N.c.status,
                        N.c.attempt_count,
                        N.c.last_error,
                        N.c.last_error_code,
                        N.c.last_provider,
                    ).where(N.c.id == notification_id)
                )
            ).first()
            return dict(row._mapping) if row else None

    async def delivery_states(self, ids: list[str]) -> list[tuple[str, str | None]]:
        """(status, last provider) of each notification in ``ids`` that exists."""
        if not ids:
            return []
        async with self._turn(), self.engine.connect() as session:
            rows = await session.execute(
                select(N.c.status, N.c.last_provider).where(N.c.id.in_(ids))
            )
            return [(r.status, r.last_provider) for r in rows]

    async def publish_now(self, notification_id: str) -> None:
        """Bring a scheduled send forward: the outbox relay publishes it on its next pass."""
        async with self._turn(), self.engine.begin() as session:
            await session.execute(
                update(OUTBOX)
                .where(OUTBOX.c.notification_id == notification_id)
                .values(available_at=utcnow())
            )
