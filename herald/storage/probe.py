"""The database half of ``/readyz``: commit a real write, since accepting needs writes.

``SELECT 1`` still answers on a full disk or while another process holds SQLite's write
lock; upserting this process's row in ``readiness_probes`` and committing does not.
"""

from __future__ import annotations

import os
import socket

from sqlalchemy.ext.asyncio import AsyncEngine

from herald.domain import utcnow
from herald.storage.db import upsert
from herald.storage.models import ReadinessProbe, table_of


def process_name(role: str) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{role}"[:200]


async def probe_write(engine: AsyncEngine, process: str) -> None:
    """Raise unless a write transaction commits within the engine's wait limits."""
    row = {"process": process, "checked_at": utcnow()}
    statement = upsert(engine, table_of(ReadinessProbe), ["process"], row)
    async with engine.begin() as conn:
        await conn.execute(statement)
