"""The audit log page: who replayed, discarded, changed rules or overrode a breaker."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from dlq.audit import recent
from dlq.console.web import ConsoleRefused, Viewer, needs, render
from dlq.queries import BadCursor

router = APIRouter(prefix="/console", include_in_schema=False)
PAGE = 100
ACTIONS = (
    "dlq.replay",
    "dlq.bulk_replay",
    "dlq.discard",
    "routing.save",
    "routing.rollback",
    "breaker.override",
)


@router.get("/audit", response_class=HTMLResponse)
async def audit_page(
    request: Request, seen: Annotated[Viewer, Depends(needs("dlq:read"))]
) -> HTMLResponse:
    action = request.query_params.get("action") or None
    cursor = request.query_params.get("cursor") or None
    try:
        entries, next_cursor = await recent(
            request.app.state.readers,
            limit=PAGE,
            action=action,
            cursor=cursor,
            cursors=request.app.state.cursors,
        )
    except BadCursor:
        raise ConsoleRefused(422, "That page link is not one this console made.") from None
    next_query = urlencode({k: v for k, v in (("action", action), ("cursor", next_cursor)) if v})
    return render(
        request,
        "audit.html",
        seen,
        entries=entries,
        action=action,
        actions=ACTIONS,
        next_cursor=next_cursor,
        next_query=next_query,
    )
