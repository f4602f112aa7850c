"""Dead-letter listing with filters and keyset (cursor) pagination, newest first."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select

from herald.logs import mask_address, mask_text
from herald.signing import BadCursor as BadCursor  # re-exported for the list's callers
from herald.signing import CursorCodec
from herald.storage.db import SessionFactory
from herald.storage.models import Attempt, DeadLetter

#: The list a dead-letter cursor is signed for.
CURSOR_KIND = "dlq"


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    channel: str | None = None
    category: str | None = None
    provider: str | None = None
    reason: str | None = None
    error_code: str | None = None
    caller: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    state: str | None = "open"
    #: Only rows a replay can act on (unreadable ones belong to no notification).
    replayable: bool = False


def item(row: DeadLetter) -> dict[str, Any]:
    return {
        "id": row.id,
        "notification_id": row.notification_id,
        "channel": row.channel,
        "category": row.category,
        "reason": row.reason,
        "last_error": mask_text(row.last_error) if row.last_error else None,
        "last_error_code": row.last_error_code,
        "last_provider": row.last_provider,
        "attempts": row.attempts,
        "caller": row.caller,
        "state": row.state,
        "dead_lettered_at": row.dead_lettered_at.isoformat(),
    }


async def list_dead_letters(
    sessions: SessionFactory,
    f: DeadLetterFilter,
    *,
    limit: int,
    cursor: str | None,
    cursors: CursorCodec,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page, newest first, and the signed cursor of the next (``None`` on the last).

    Raises ``BadCursor`` for a cursor ``cursors`` did not sign for this list.
    """
    D = DeadLetter
    query = _filtered(select(D), f)
    if cursor:
        at, id_ = cursors.decode(CURSOR_KIND, cursor)
        query = query.where(
            or_(D.dead_lettered_at < at, and_(D.dead_lettered_at == at, D.id < id_))
        )
    query = query.order_by(D.dead_lettered_at.desc(), D.id.desc()).limit(limit + 1)
    async with sessions() as session:
        rows = list((await session.execute(query)).scalars())
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = cursors.encode(CURSOR_KIND, rows[-1].dead_lettered_at, rows[-1].id)
    return [item(r) for r in rows], next_cursor


def _filtered(query: Any, f: DeadLetterFilter) -> Any:
    D = DeadLetter
    for column, value in (
        (D.channel, f.channel),
        (D.category, f.category),
        (D.last_provider, f.provider),
        (D.reason, f.reason),
        (D.last_error_code, f.error_code),
        (D.caller, f.caller),
        (D.state, f.state),
    ):
        if value is not None:
            query = query.where(column == value)
    if f.replayable:
        query = query.where(D.notification_id.is_not(None))
    if f.since is not None:
        query = query.where(D.dead_lettered_at >= f.since)
    if f.until is not None:
        query = query.where(D.dead_lettered_at < f.until)
    return query


async def count_matching(sessions: SessionFactory, f: DeadLetterFilter) -> int:
    async with sessions() as session:
        query = _filtered(select(func.count()).select_from(DeadLetter), f)
        return int((await session.execute(query)).scalar_one())


async def oldest_after(
    sessions: SessionFactory, f: DeadLetterFilter, after: tuple[datetime, str] | None, limit: int
) -> list[DeadLetter]:
    """The next ``limit`` matching dead letters, oldest first, after a (time, id) cursor."""
    D = DeadLetter
    query = _filtered(select(D), f)
    if after is not None:
        at, id_ = after
        query = query.where(
            or_(D.dead_lettered_at > at, and_(D.dead_lettered_at == at, D.id > id_))
        )
    query = query.order_by(D.dead_lettered_at, D.id).limit(limit)
    async with sessions() as session:
        return list((await session.execute(query)).scalars())


def masked_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """What on-call may see: the address partly hidden, an OTP never."""
    shown = dict(payload)
    if shown.get("unreadable"):  # raw bytes: mask every address found in the text
        raw = dict(shown.get("raw") or {})
        if isinstance(raw.get("text"), str):
            raw["text"] = mask_text(raw["text"])
        shown["raw"] = raw
        return shown
    if shown.get("to"):
        shown["to"] = mask_address(str(shown["to"]))
    if shown.get("category") == "otp":
        shown["body"] = "[redacted]"
    return shown


async def detail(sessions: SessionFactory, dead_letter_id: str) -> dict[str, Any] | None:
    """One dead letter with its payload (personal data masked) and every attempt of every
    generation, oldest first: what the API and the console show."""
    async with sessions() as session:
        dead = await session.get(DeadLetter, dead_letter_id)
        if dead is None:
            return None
        attempts = (
            await session.execute(
                select(Attempt)
                .where(Attempt.notification_id == dead.notification_id)
                .order_by(Attempt.id)
            )
        ).scalars()
        history = [
            {
                "generation": a.generation,
                "attempt": a.attempt_no,
                "provider": a.provider,
                "outcome": a.outcome,
                "error_code": a.error_code,
                "error": mask_text(a.error) if a.error else None,
                "started_at": a.started_at.isoformat(),
                "latency_ms": a.latency_ms,
            }
            for a in attempts
        ]
    return {
        **item(dead),
        "resolved_at": dead.resolved_at.isoformat() if dead.resolved_at else None,
        "resolved_by": dead.resolved_by,
        "resolution": dead.resolution,
        "payload": masked_payload(dead.payload),
        "history": history,
    }


async def open_counts(sessions: SessionFactory, *, top: int = 10) -> dict[str, Any]:
    """Open dead letters in total and by channel, reason, provider and error code (the
    ``top`` largest groups of each): the console's "what is dead and why"."""
    D = DeadLetter
    grouped: dict[str, list[tuple[str | None, int]]] = {}
    async with sessions() as session:
        total = int(
            (await session.execute(select(func.count()).where(D.state == "open"))).scalar_one()
        )
        for name, column in (
            ("channel", D.channel),
            ("reason", D.reason),
            ("provider", D.last_provider),
            ("error_code", D.last_error_code),
        ):
            count = func.count().label("n")
            rows = await session.execute(
                select(column, count)
                .where(D.state == "open")
                .group_by(column)
                .order_by(count.desc(), column)
                .limit(top)
            )
            grouped[name] = [(value, int(n)) for value, n in rows]
    return {"total": total, **grouped}
