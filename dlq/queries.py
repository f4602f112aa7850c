"""Dead-letter listing with filters and keyset (cursor) pagination, newest first."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select

from herald.storage.db import SessionFactory
from herald.storage.models import DeadLetter


class BadCursor(ValueError):
    pass


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


def encode_cursor(at: datetime, id_: str) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{id_}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, id_ = raw.partition("|")
        return datetime.fromisoformat(at), id_
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadCursor(str(exc)) from None


def item(row: DeadLetter) -> dict[str, Any]:
    return {
        "id": row.id,
        "notification_id": row.notification_id,
        "channel": row.channel,
        "category": row.category,
        "reason": row.reason,
        "last_error": row.last_error,
        "last_error_code": row.last_error_code,
        "last_provider": row.last_provider,
        "attempts": row.attempts,
        "caller": row.caller,
        "state": row.state,
        "dead_lettered_at": row.dead_lettered_at.isoformat(),
    }


async def list_dead_letters(
    sessions: SessionFactory, f: DeadLetterFilter, *, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    D = DeadLetter
    query = _filtered(select(D), f)
    if cursor:
        at, id_ = decode_cursor(cursor)
        query = query.where(
            or_(D.dead_lettered_at < at, and_(D.dead_lettered_at == at, D.id < id_))
        )
    query = query.order_by(D.dead_lettered_at.desc(), D.id.desc()).limit(limit + 1)
    async with sessions() as session:
        rows = list((await session.execute(query)).scalars())
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].dead_lettered_at, rows[-1].id)
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
