"""What the console's overview shows: dead letters by cause, breakers, queue depths and
sends per minute. Each part is read on its own, so one unavailable backend blanks one
panel instead of the page."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select

from herald.broker import BROKER_ERRORS
from herald.domain import AttemptOutcome, utcnow
from herald.logs import get_logger
from herald.monitor import QueueDepthMonitor
from herald.storage.db import SessionFactory
from herald.storage.models import Attempt

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Minute:
    start: datetime
    sent: int
    failed: int


async def sends_per_minute(
    sessions: SessionFactory, *, minutes: int = 15, now: datetime | None = None
) -> list[Minute]:
    """Attempts per minute over the last ``minutes`` (oldest first), counted in one query
    over the ``started_at`` index with portable CASE sums (no dialect's date functions)."""
    now = now or utcnow()
    end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    starts = [end - timedelta(minutes=minutes - i) for i in range(minutes)]
    sent = Attempt.outcome.in_([AttemptOutcome.SENT.value, AttemptOutcome.RECONCILED.value])
    failed = Attempt.outcome.in_(
        [AttemptOutcome.TRANSIENT_ERROR.value, AttemptOutcome.PERMANENT_ERROR.value]
    )
    columns = []
    for start in starts:
        in_minute = (Attempt.started_at >= start) & (
            Attempt.started_at < start + timedelta(minutes=1)
        )
        columns.append(func.sum(case((in_minute & sent, 1), else_=0)))
        columns.append(func.sum(case((in_minute & failed, 1), else_=0)))
    query = select(*columns).where(Attempt.started_at >= starts[0], Attempt.started_at < end)
    async with sessions() as session:
        row = (await session.execute(query)).one()
    return [
        Minute(start, int(row[2 * i] or 0), int(row[2 * i + 1] or 0))
        for i, start in enumerate(starts)
    ]


async def queue_depths(monitor: QueueDepthMonitor) -> dict[str, int] | None:
    """Ready messages per work queue and the DLQ; ``None`` when the broker is away."""
    try:
        return await monitor.sample()
    except BROKER_ERRORS as exc:
        log.warning("console_queue_depths_failed", error=repr(exc))
        monitor.forget_channel()
        return None


def bar_heights(minutes: list[Minute], *, tallest_px: int = 40) -> list[dict[str, Any]]:
    """Scale the per-minute counts to bar heights for the page's small chart."""
    peak = max((m.sent + m.failed for m in minutes), default=0) or 1
    return [
        {
            "label": m.start.strftime("%H:%M"),
            "sent": m.sent,
            "failed": m.failed,
            "sent_px": round(tallest_px * m.sent / peak),
            "failed_px": round(tallest_px * m.failed / peak),
        }
        for m in minutes
    ]
