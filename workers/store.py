"""What the delivery loop reads and writes in the database (SQLAlchemy Core, one txn each).

The row's **lease** (``lease_owner``, ``lease_until``) fences every send: a worker calls a
vendor only after its guarded ``UPDATE`` won the row, in the transaction that writes the
attempt as ``sending``. Redis claims stay the fast path in front; when Redis loses them
(a restart without persistence, a failover that drops writes), the lease still lets one
worker at a time send. Writes from a worker that does not hold the lease never touch a
row another worker holds (``StatusWrite.HELD``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, bindparam, insert, or_, select, update
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
class Lease:
    """One delivery's hold on a row: a token no other delivery shares (two copies of a
    message in one worker get two), and when it lapses unless renewed."""

    owner: str
    until: datetime


@dataclass(frozen=True, slots=True)
class Begun:
    attempt_id: int
    attempt_no: int
    #: Providers an earlier attempt of this generation timed out on: a timed-out call may
    #: have reached the vendor, so the delivery asks them (``lookup``) before sending.
    timed_out: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Held:
    """Another delivery holds the row's lease (its send is in progress): wait for it."""

    owner: str | None


@dataclass(frozen=True, slots=True)
class Skip:
    """Nothing to send: the row is missing, terminal, or from an older generation."""

    status: Status | None
    reason: str


@dataclass(frozen=True, slots=True)
class Interrupted:
    pending: PendingAttempt
    attempt_count: int


@dataclass(frozen=True, slots=True)
class BatchStart:
    """One message of a batch about to be sent to ``provider`` (its planned first choice)."""

    notification_id: str
    generation: int
    provider: str


@dataclass(frozen=True, slots=True)
class Started:
    """The row is this batch's: attempt ``attempt_no`` is written ``sending``."""

    attempt_id: int
    attempt_no: int


@dataclass(frozen=True, slots=True)
class SentRecord:
    """A vendor accepted attempt ``attempt_id``: what the batch's settle writes."""

    notification_id: str
    attempt_id: int
    vendor_message_id: str | None
    latency_ms: float | None
    finished_at: datetime


#: Rows a batch may start in one statement: not sending, not final. A row left
#: ``sending`` (its worker died) or whose last call timed out needs the one-by-one path,
#: which asks the vendor before sending again.
STARTABLE = (Status.ACCEPTED.value, Status.QUEUED.value, Status.RETRY_SCHEDULED.value)


class StatusWrite(enum.Enum):
    """What a status write by a worker that holds no lease did."""

    CHANGED = "changed"
    FINAL = "final"  # the row is terminal (or gone): nothing left to do
    HELD = "held"  # another delivery holds the row's lease: try again after it ends


#: The error code a call that got no answer in time is recorded with (ours and adapters').
TIMEOUT_CODE = "timeout"


def lease_free(now: datetime) -> ColumnElement[bool]:
    """No delivery holds the row: never leased, released, or lapsed (its holder died)."""
    return or_(N.c.lease_until.is_(None), N.c.lease_until <= now)


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
        lease: Lease,
        rules_version: int | None = None,
    ) -> Begun | Skip | Interrupted | Held:
        """Win the row's lease and write the attempt (``sending``), in one transaction,
        before any vendor call; or say why not (nothing to send, or held elsewhere).

        The ``UPDATE`` is guarded by what was read (status, attempt count, generation) and
        by the lease being free, so of two workers racing for one row exactly one wins;
        a row left ``sending`` by a holder whose lease lapsed comes back as
        ``Interrupted``, for the caller to reconcile before it sends again.
        """
        async with self._turn(), self.engine.begin() as session:
            row = (
                await session.execute(
                    select(
                        N.c.status,
                        N.c.generation,
                        N.c.attempt_count,
                        N.c.lease_owner,
                        N.c.lease_until,
                        N.c.last_error_code,
                    ).where(N.c.id == notification_id)
                )
            ).first()
            if row is None:
                return Skip(None, "missing")
            status = Status(row.status)
            if row.generation != generation:
                return Skip(status, "stale_generation")
            if status.is_terminal:
                return Skip(status, "terminal")
            if row.lease_until is not None and row.lease_until > now:
                return Held(row.lease_owner)
            pending = (
                await self._pending(session, notification_id, generation)
                if status is Status.SENDING
                else None
            )
            # Taking over an interrupted send re-uses its attempt number (not charged twice).
            attempt_no = pending.attempt_no if pending else row.attempt_count + 1
            values: dict[str, object] = {
                "status": Status.SENDING.value,
                "attempt_count": attempt_no,
                "updated_at": now,
                "lease_owner": lease.owner,
                "lease_until": lease.until,
            }
            if pending is None:
                values["last_provider"] = provider
            if rules_version is not None:
                values["rules_version"] = rules_version
            won = await session.execute(
                update(N)
                .where(
                    N.c.id == notification_id,
                    N.c.generation == generation,
                    N.c.status == row.status,
                    N.c.attempt_count == row.attempt_count,
                    lease_free(now),
                )
                .values(**values)
            )
            if not _rowcount(won):
                return Held(None)  # another worker won it between our read and write
            if pending is not None:
                return Interrupted(pending, row.attempt_count)
            timed_out = (
                await self._timed_out(session, notification_id, generation)
                if row.last_error_code == TIMEOUT_CODE
                else ()
            )
            attempt_id = await self._insert_attempt(
                session, notification_id, generation, attempt_no, provider, now
            )
            return Begun(attempt_id, attempt_no, timed_out)

    async def begin_many(
        self,
        starts: Sequence[BatchStart],
        now: datetime,
        lease: Lease,
        rules_version: int | None = None,
    ) -> dict[str, Started]:
        """``begin`` for a whole batch in one transaction: one guarded ``UPDATE …
        RETURNING`` per (provider, generation) group and one multi-row ``INSERT`` of the
        attempts. Rows it does not return (missing, final, held, interrupted, timed out,
        another generation) are left untouched for the one-by-one path to decide."""
        groups: dict[tuple[str, int], list[str]] = {}
        for start in starts:
            groups.setdefault((start.provider, start.generation), []).append(start.notification_id)
        values: dict[str, object] = {
            "status": Status.SENDING.value,
            "attempt_count": N.c.attempt_count + 1,
            "updated_at": now,
            "lease_owner": lease.owner,
            "lease_until": lease.until,
        }
        if rules_version is not None:
            values["rules_version"] = rules_version
        won: dict[str, tuple[int, int, str]] = {}
        async with self._turn(), self.engine.begin() as session:
            for (provider, generation), ids in groups.items():
                rows = await session.execute(
                    update(N)
                    .where(
                        N.c.id.in_(ids),
                        N.c.generation == generation,
                        N.c.status.in_(STARTABLE),
                        or_(N.c.last_error_code.is_(None), N.c.last_error_code != TIMEOUT_CODE),
                        lease_free(now),
                    )
                    .values(**values, last_provider=provider)
                    .returning(N.c.id, N.c.attempt_count)
                )
                for row in rows:
                    won[row.id] = (generation, row.attempt_count, provider)
            if not won:
                return {}
            inserted = await session.execute(
                insert(A).returning(A.c.id, A.c.notification_id, sort_by_parameter_order=True),
                [
                    {
                        "notification_id": nid,
                        "generation": generation,
                        "attempt_no": attempt_no,
                        "provider": provider,
                        "outcome": AttemptOutcome.SENDING.value,
                        "started_at": now,
                    }
                    for nid, (generation, attempt_no, provider) in won.items()
                ],
            )
            return {
                row.notification_id: Started(row.id, won[row.notification_id][1])
                for row in inserted
            }

    async def settle_sent(self, records: Sequence[SentRecord]) -> None:
        """Record a batch of sends in one transaction (two ``executemany``). ``sent`` is
        written whoever holds the lease now, as ``finish`` does: the vendor took it."""
        if not records:
            return
        async with self._turn(), self.engine.begin() as session:
            await session.execute(
                update(A)
                .where(A.c.id == bindparam("b_attempt"))
                .values(
                    outcome=AttemptOutcome.SENT.value,
                    finished_at=bindparam("b_at"),
                    latency_ms=bindparam("b_latency"),
                    vendor_message_id=bindparam("b_vendor_id"),
                ),
                [
                    {
                        "b_attempt": r.attempt_id,
                        "b_at": r.finished_at,
                        "b_latency": r.latency_ms,
                        "b_vendor_id": r.vendor_message_id,
                    }
                    for r in records
                ],
            )
            await session.execute(
                update(N)
                .where(N.c.id == bindparam("b_id"))
                .values(
                    status=Status.SENT.value,
                    updated_at=bindparam("b_at"),
                    lease_owner=None,
                    lease_until=None,
                    vendor_message_id=bindparam("b_vendor_id"),
                ),
                [
                    {
                        "b_id": r.notification_id,
                        "b_at": r.finished_at,
                        "b_vendor_id": r.vendor_message_id,
                    }
                    for r in records
                ],
            )

    async def _pending(
        self, session: AsyncConnection, notification_id: str, generation: int
    ) -> PendingAttempt | None:
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
        return PendingAttempt(pending.id, pending.provider, pending.attempt_no) if pending else None

    async def _timed_out(
        self, session: AsyncConnection, notification_id: str, generation: int
    ) -> tuple[str, ...]:
        """Providers whose calls for this generation got no answer in time (rare: read
        only when the last attempt timed out)."""
        rows = await session.execute(
            select(A.c.provider)
            .where(
                A.c.notification_id == notification_id,
                A.c.generation == generation,
                A.c.error_code == TIMEOUT_CODE,
            )
            .distinct()
        )
        return tuple(sorted(rows.scalars()))

    async def start_attempt(
        self,
        notification_id: str,
        generation: int,
        attempt_no: int,
        provider: str,
        now: datetime,
        lease: Lease,
    ) -> int | None:
        """Another attempt within the same delivery (a failover, or the send after a
        reconciled interruption): renews the lease; ``None`` if this delivery lost it."""
        async with self._turn(), self.engine.begin() as session:
            renewed = await session.execute(
                update(N)
                .where(N.c.id == notification_id, N.c.lease_owner == lease.owner)
                .values(
                    status=Status.SENDING.value,
                    attempt_count=attempt_no,
                    updated_at=now,
                    last_provider=provider,
                    lease_until=lease.until,
                )
            )
            if not _rowcount(renewed):
                return None
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
        lease: Lease,
        vendor_message_id: str | None = None,
        error: str | None = None,
        error_code: str | None = None,
        provider: str | None = None,
    ) -> None:
        """Record one attempt's outcome and the notification's new status together.

        ``sending`` keeps the lease (the delivery goes on with the next candidate); any
        other status releases it. ``sent`` is written whoever holds the lease now (the
        vendor took it: that is the truth); any other status only by the lease's holder,
        so a delivery that lost its lease cannot undo the one that took it over.
        ``provider`` names the vendor that answered when it is not the attempt's own
        (a lookup that found an earlier, timed-out send).
        """
        async with self._turn(), self.engine.begin() as session:
            attempt: dict[str, object] = {
                "outcome": outcome.value,
                "finished_at": now,
                "latency_ms": latency_ms,
                "vendor_message_id": vendor_message_id,
            }
            if error is not None:  # a late "sent" keeps the "interrupted" a takeover wrote
                attempt.update(error=error, error_code=error_code)
            if provider is not None:
                attempt["provider"] = provider
            await session.execute(update(A).where(A.c.id == attempt_id).values(**attempt))
            values: dict[str, object] = {"status": status.value, "updated_at": now}
            if status is not Status.SENDING:
                values.update(lease_owner=None, lease_until=None)
            if vendor_message_id is not None:
                values["vendor_message_id"] = vendor_message_id
            if error is not None:
                values["last_error"] = error
                values["last_error_code"] = error_code
            stmt = update(N).where(N.c.id == notification_id)
            if status is not Status.SENT:
                stmt = stmt.where(N.c.lease_owner == lease.owner)
            await session.execute(stmt.values(**values))

    async def set_status(
        self,
        notification_id: str,
        status: Status,
        now: datetime,
        *,
        error: str | None = None,
        error_code: str | None = None,
        only_if_not_terminal: bool = False,
        lease: Lease | None = None,
        attempt_count: int | None = None,
    ) -> StatusWrite:
        """Write a status. With ``lease``: as that lease's holder, and release it. Without:
        only a row no delivery holds (a live send is never overwritten), and with
        ``only_if_not_terminal`` only a row not final yet.

        ``attempt_count`` resets the charged attempts (a failed half-open probe is the
        breaker's test, not the message's attempt).
        """
        async with self._turn(), self.engine.begin() as session:
            stmt = update(N).where(N.c.id == notification_id)
            if lease is not None:
                stmt = stmt.where(N.c.lease_owner == lease.owner)
            else:
                stmt = stmt.where(lease_free(now))
            if only_if_not_terminal:
                stmt = stmt.where(N.c.status.not_in([s.value for s in TERMINAL_STATUSES]))
            values: dict[str, object] = {
                "status": status.value,
                "updated_at": now,
                "lease_owner": None,
                "lease_until": None,
            }
            if error is not None:
                values["last_error"] = error
                values["last_error_code"] = error_code
            if attempt_count is not None:
                values["attempt_count"] = attempt_count
            if _rowcount(await session.execute(stmt.values(**values))):
                return StatusWrite.CHANGED
            if lease is not None:
                return StatusWrite.HELD  # our lease lapsed and another delivery took the row
            row = (
                await session.execute(
                    select(N.c.status, N.c.lease_until).where(N.c.id == notification_id)
                )
            ).first()
            if row is None or Status(row.status).is_terminal:
                return StatusWrite.FINAL
            return StatusWrite.HELD

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


def _rowcount(result: object) -> int:
    return int(cast(CursorResult[Any], result).rowcount)
