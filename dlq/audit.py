"""The audit log: every replay, discard, rules change and breaker override, append-only."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from herald.domain import utcnow
from herald.ids import new_id
from herald.storage.db import SessionFactory
from herald.storage.models import AuditEntry, table_of

AUDIT = table_of(AuditEntry)


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
    sessions: SessionFactory, *, limit: int, action: str | None
) -> list[dict[str, Any]]:
    query = select(AUDIT).order_by(AUDIT.c.at.desc(), AUDIT.c.id.desc()).limit(limit)
    if action:
        query = query.where(AUDIT.c.action == action)
    async with sessions() as session:
        rows = await session.execute(query)
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
        ]
