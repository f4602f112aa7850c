"""``GET /v1/dlq``: what ended undelivered, and why."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from dlq.queries import BadCursor, DeadLetterFilter, list_dead_letters
from herald.domain import Channel, DeadLetterReason
from producer.auth import Principal
from producer.deps import require
from producer.problems import FieldError

router = APIRouter(prefix="/v1/dlq", tags=["dead letters"])


@router.get("")
async def list_dlq(
    request: Request,
    _: Annotated[Principal, Depends(require("dlq:read"))],
    channel: Channel | None = None,
    category: str | None = None,
    provider: str | None = None,
    reason: DeadLetterReason | None = None,
    error_code: str | None = None,
    caller: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise FieldError(name, "needs a timezone (e.g. 2026-01-01T00:00:00Z)")
    filters = DeadLetterFilter(
        channel=channel.value if channel else None,
        category=category,
        provider=provider,
        reason=reason.value if reason else None,
        error_code=error_code,
        caller=caller,
        since=since,
        until=until,
    )
    try:
        items, next_cursor = await list_dead_letters(
            request.app.state.sessions, filters, limit=limit, cursor=cursor
        )
    except BadCursor:
        raise FieldError("cursor", "is not a cursor this API returned") from None
    return {"items": items, "next_cursor": next_cursor}
