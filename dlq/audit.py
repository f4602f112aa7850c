"""The audit log: every replay, discard, rules change and breaker override, append-only."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from herald.domain import utcnow
from herald.ids import new_id
from herald.signing import CursorCodec
from herald.storage.db import SessionFactory
from herald.storage.models import AuditEntry, table_of

AUDIT = table_of(AuditEntry)
#: The list an audit cursor is signed for.
CURSOR_KIND = "audit"


async def record(
    conn: AsyncSession | AsyncConnection,
    *,
    actor: str,
    action: str,
    target: str,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Write one entry inside the caller's transaction, so the change and its record
    commit together."""
    await conn.execute(
        insert(AUDIT).values(
            id=new_id(),
            at=utcnow(),
            actor=actor,
            action=action,
            target=target,
            reason=reason,
            details=details or {},
        )
    )


async def record_now(sessions: SessionFactory, **entry: Any) -> None:
    async with sessions.begin() as session:
        await record(session, **entry)


async def recent(
    sessions: SessionFactory,
    *,
    limit: int,
    action: str | None = None,
    actor: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: str | None = None,
    cursors: CursorCodec,
) -> tuple[list[dict[str, Any]], str | None]:
    """Entries newest first, one page at a time: the page and the cursor of the next one
    (``None`` on the last page). ``since`` is inclusive, ``until`` exclusive.

    Raises ``BadCursor`` for a cursor ``cursors`` did not sign for the audit log.
    """
    query = select(AUDIT)
    for column, value in ((AUDIT.c.action, action), (AUDIT.c.actor, actor)):
        if value:
            query = query.where(column == value)
    if since is not None:
        query = query.where(AUDIT.c.at >= since)
    if until is not None:
        query = query.where(AUDIT.c.at < until)
    if cursor:
        at, id_ = cursors.decode(CURSOR_KIND, cursor)
        query = query.where(or_(AUDIT.c.at < at, and_(AUDIT.c.at == at, AUDIT.c.id < id_)))
    query = query.order_by(AUDIT.c.at.desc(), AUDIT.c.id.desc()).limit(limit + 1)
    async with sessions() as session:
        rows = list(await session.execute(query))
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = cursors.encode(CURSOR_KIND, rows[-1].at, rows[-1].id)
    return [
        {
            "id": r.id,
            "at": r.at.isoformat(),
            "actor": r.actor,
            "action": r.action,
            "target": r.target,
            "reason": r.reason,
            "details": r.details,
        }
        for r in rows
    ], next_cursor
