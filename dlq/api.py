"""``GET /v1/dlq``: what ended undelivered, and why."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from dlq.audit import recent
from dlq.bulk import BulkReplayer, filter_of
from dlq.queries import (
    BadCursor,
    DeadLetterFilter,
    count_matching,
    detail,
    item,
    list_dead_letters,
    oldest_after,
)
from dlq.replay import (
    DeadLetterNotFound,
    DeadLetters,
    ProviderRefused,
    ReplayRefused,
    provider_problem,
)
from herald.domain import Channel, DeadLetterReason
from producer.auth import Principal
from producer.deps import require
from producer.problems import FieldError, Problem
from producer.validation import IsoDatetime, StrictBool, StrictFloat

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
    since: IsoDatetime | None = None,
    until: IsoDatetime | None = None,
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
            request.app.state.readers,
            filters,
            limit=limit,
            cursor=cursor,
            cursors=request.app.state.cursors,
        )
    except BadCursor:
        raise FieldError("cursor", "is not a cursor this API returned") from None
    return {"items": items, "next_cursor": next_cursor}


@router.get("/{dead_letter_id}")
async def show_dead_letter(
    request: Request, dead_letter_id: str, _: Annotated[Principal, Depends(require("dlq:read"))]
) -> dict[str, Any]:
    """One dead letter with its payload (personal data masked) and every attempt."""
    found = await detail(request.app.state.readers, dead_letter_id)
    if found is None:
        raise Problem(404, "Not found", f"no dead letter {dead_letter_id}")
    return found


class ReplayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: str | None = Field(None, description="send through this provider instead")
    reason: str | None = Field(None, max_length=500)


@router.post(
    "/{dead_letter_id}/replay",
    status_code=202,
    responses={200: {"description": "sent meanwhile: skipped (`status: skipped`)"}},
)
async def replay_dead_letter(
    request: Request,
    dead_letter_id: str,
    principal: Annotated[Principal, Depends(require("dlq:write"))],
    body: ReplayRequest | None = None,
) -> JSONResponse:
    """Send it again under the same notification id, with a fresh attempt budget."""
    body = body or ReplayRequest()
    if (
        body.provider is not None
        and body.provider not in request.app.state.rules_source.current().providers
    ):
        raise FieldError("provider", f"no provider named {body.provider!r} in the rules in force")
    dead_letters: DeadLetters = request.app.state.dead_letters
    try:
        result = await dead_letters.replay(
            dead_letter_id, actor=principal.name, provider=body.provider, reason=body.reason
        )
    except DeadLetterNotFound:
        raise Problem(404, "Not found", f"no dead letter {dead_letter_id}") from None
    except ProviderRefused as exc:
        raise FieldError("provider", str(exc)) from None
    except ReplayRefused as exc:
        raise Problem(409, "Cannot replay", str(exc)) from None
    return JSONResponse(
        {"notification_id": result.notification_id, "status": result.status},
        status_code=202 if result.status == "accepted" else 200,
    )


class DiscardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=3, max_length=500)


@router.delete("/{dead_letter_id}", status_code=204)
async def discard_dead_letter(
    request: Request,
    dead_letter_id: str,
    body: DiscardRequest,
    principal: Annotated[Principal, Depends(require("dlq:write"))],
) -> Response:
    """Give up on it for good (the reason is kept in the audit log)."""
    dead_letters: DeadLetters = request.app.state.dead_letters
    try:
        await dead_letters.discard(dead_letter_id, actor=principal.name, reason=body.reason)
    except DeadLetterNotFound:
        raise Problem(404, "Not found", f"no dead letter {dead_letter_id}") from None
    except ReplayRefused as exc:
        raise Problem(409, "Cannot discard", str(exc)) from None
    return Response(status_code=204)


audit_router = APIRouter(prefix="/v1/audit", tags=["audit"])


@audit_router.get("")
async def audit_log(
    request: Request,
    _: Annotated[Principal, Depends(require("dlq:read"))],
    action: str | None = None,
    actor: str | None = None,
    since: IsoDatetime | None = None,
    until: IsoDatetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Who replayed, discarded, changed rules or overrode a breaker: newest first, a page
    at a time (pass ``next_cursor`` back as ``cursor``; it is null on the last page)."""
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise FieldError(name, "needs a timezone (e.g. 2026-01-01T00:00:00Z)")
    try:
        items, next_cursor = await recent(
            request.app.state.readers,
            limit=limit,
            action=action,
            actor=actor,
            since=since,
            until=until,
            cursor=cursor,
            cursors=request.app.state.cursors,
        )
    except BadCursor:
        raise FieldError("cursor", "is not a cursor this API returned") from None
    return {"items": items, "next_cursor": next_cursor}


class BulkReplayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: Channel | None = None
    category: str | None = None
    provider: str | None = Field(None, description="dead letters whose last provider was this")
    reason: DeadLetterReason | None = None
    error_code: str | None = None
    caller: str | None = None
    since: IsoDatetime | None = None
    until: IsoDatetime | None = None
    #: Strict: ``0`` or ``"false"`` must not start a real replay of every match.
    dry_run: StrictBool = False
    override_provider: str | None = Field(None, description="send them through this provider")
    max_per_s: StrictFloat = Field(10.0, gt=0, le=1000)
    comment: str | None = Field(None, max_length=500)


@router.post(
    "/replay",
    responses={
        200: {"description": "`dry_run`: the count and a sample"},
        202: {"description": "a background replay started: `replay_id` and `count`"},
    },
)
async def bulk_replay(
    request: Request,
    body: BulkReplayRequest,
    principal: Annotated[Principal, Depends(require("dlq:write"))],
) -> JSONResponse:
    """Every open dead letter matching the filter: ``dry_run`` counts them and shows a
    sample; otherwise they are replayed in the background at ``max_per_s`` at most."""
    for name, value in (("since", body.since), ("until", body.until)):
        if value is not None and value.tzinfo is None:
            raise FieldError(name, "needs a timezone (e.g. 2026-01-01T00:00:00Z)")
    rules = request.app.state.rules_source.current()
    if body.override_provider is not None:
        channel = body.channel.value if body.channel is not None else None
        problem = provider_problem(rules, body.override_provider, channel)
        if problem is not None:
            raise FieldError("override_provider", problem)
    filters = body.model_dump(
        mode="json",
        include={
            "channel",
            "category",
            "provider",
            "reason",
            "error_code",
            "caller",
            "since",
            "until",
        },
        exclude_none=True,
    )
    matching = filter_of(filters)
    readers = request.app.state.readers
    count = await count_matching(readers, matching)
    if body.dry_run:
        sample = await oldest_after(readers, matching, None, 5)
        return JSONResponse({"count": count, "sample": [item(d) for d in sample]})
    bulk: BulkReplayer = request.app.state.bulk_replayer
    replay_id = await bulk.create(
        filters,
        count,
        actor=principal.name,
        override_provider=body.override_provider,
        max_per_s=body.max_per_s,
        reason=body.comment,
    )
    return JSONResponse({"replay_id": replay_id, "count": count}, status_code=202)


@router.get("/replays/{replay_id}")
async def bulk_replay_progress(
    request: Request, replay_id: str, _: Annotated[Principal, Depends(require("dlq:read"))]
) -> dict[str, Any]:
    found = await request.app.state.bulk_replayer.get(replay_id)
    if found is None:
        raise Problem(404, "Not found", f"no bulk replay {replay_id}")
    return found
