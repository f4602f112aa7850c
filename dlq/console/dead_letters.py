"""Dead-letter pages: the filtered list, one entry with its attempt timeline, replay and
discard behind a confirmation, and bulk replay from a dry-run count to a progress bar."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response

from dlq.bulk import BulkReplayer, filter_of
from dlq.console.filters import WINDOWS, FilterForm
from dlq.console.web import (
    ConsoleRefused,
    Viewer,
    checked_form,
    go,
    is_htmx,
    needs,
    render,
)
from dlq.queries import BadCursor, count_matching, detail, item, list_dead_letters, oldest_after
from dlq.replay import (
    DeadLetterNotFound,
    DeadLetters,
    ProviderRefused,
    ReplayRefused,
    provider_problem,
)
from herald.domain import Channel, DeadLetterReason

router = APIRouter(prefix="/console", include_in_schema=False)
Reader = Annotated[Viewer, Depends(needs("dlq:read"))]
Writer = Annotated[Viewer, Depends(needs("dlq:write"))]
PAGE = 50


def _choices(request: Request) -> dict[str, Any]:
    rules = request.app.state.rules_source.current()
    return {
        "channels": [c.value for c in Channel],
        "reasons": [r.value for r in DeadLetterReason],
        "providers": sorted(rules.providers),
        "windows": list(WINDOWS),
    }


def _providers_for(request: Request, channel: str | None) -> list[str]:
    """The providers a replay may be sent through: only those of the messages' own
    channel (none when a bulk filter names no channel: they could be mixed)."""
    rules = request.app.state.rules_source.current()
    return sorted(name for name, spec in rules.providers.items() if spec.channel == channel)


@router.get("/dead-letters", response_class=HTMLResponse)
async def dead_letter_list(request: Request, seen: Reader) -> HTMLResponse:
    form = FilterForm.parse(request.query_params)
    cursor = request.query_params.get("cursor") or None
    try:
        items, next_cursor = await list_dead_letters(
            request.app.state.readers,
            form.to_filter(),
            limit=PAGE,
            cursor=cursor,
            cursors=request.app.state.cursors,
        )
    except BadCursor:
        items, next_cursor = [], None
        form.problems["cursor"] = "is not a cursor this console made; start from the first page"
    total = await count_matching(request.app.state.readers, form.to_filter())
    template = "_dead_letter_results.html" if is_htmx(request) else "dead_letters.html"
    return render(
        request,
        template,
        seen,
        status=422 if form.problems else 200,
        form=form,
        items=items,
        total=total,
        next_cursor=next_cursor,
        notice=request.query_params.get("notice"),
        **_choices(request),
    )


async def _entry(request: Request, dead_letter_id: str) -> dict[str, Any]:
    found = await detail(request.app.state.readers, dead_letter_id)
    if found is None:
        raise ConsoleRefused(404, f"There is no dead letter {dead_letter_id}.")
    return found


@router.get("/dead-letters/{dead_letter_id}", response_class=HTMLResponse)
async def dead_letter_page(request: Request, dead_letter_id: str, seen: Reader) -> HTMLResponse:
    entry = await _entry(request, dead_letter_id)
    return render(request, "dead_letter.html", seen, entry=entry, **_choices(request))


@router.get("/dead-letters/{dead_letter_id}/{action}", response_class=HTMLResponse)
async def confirm_page(
    request: Request, dead_letter_id: str, action: str, seen: Writer
) -> Response:
    """The confirmation step before a replay or a discard: what will happen, to what."""
    if action not in ("replay", "discard"):
        raise ConsoleRefused(404, "No such action.")
    entry = await _entry(request, dead_letter_id)
    if action == "replay" and entry["notification_id"] is None:
        message = "Not replayable: an unreadable message belongs to no notification."
        return await _refused(request, seen, dead_letter_id, message)
    choices = {**_choices(request), "providers": _providers_for(request, entry["channel"])}
    return render(request, f"confirm_{action}.html", seen, entry=entry, **choices)


@router.post("/dead-letters/{dead_letter_id}/replay")
async def replay(request: Request, dead_letter_id: str, seen: Writer) -> Response:
    form = await checked_form(request, seen)
    provider = str(form.get("provider") or "") or None
    reason = str(form.get("reason") or "").strip() or None
    if provider is not None and provider not in request.app.state.rules_source.current().providers:
        raise ConsoleRefused(422, f"There is no provider named {provider!r} in the rules.")
    dead_letters: DeadLetters = request.app.state.dead_letters
    try:
        result = await dead_letters.replay(
            dead_letter_id, actor=seen.principal.name, provider=provider, reason=reason
        )
    except DeadLetterNotFound:
        raise ConsoleRefused(404, f"There is no dead letter {dead_letter_id}.") from None
    except ProviderRefused as exc:
        raise ConsoleRefused(422, f"Not replayed: {exc}.") from None
    except ReplayRefused as exc:
        return await _refused(request, seen, dead_letter_id, f"Not replayed: {exc}.")
    notice = (
        f"Replayed notification {result.notification_id}."
        if result.status == "accepted"
        else f"Notification {result.notification_id} had been sent meanwhile; nothing resent."
    )
    return go(request, "/console/dead-letters?" + _notice(notice))


@router.post("/dead-letters/{dead_letter_id}/discard")
async def discard(request: Request, dead_letter_id: str, seen: Writer) -> Response:
    form = await checked_form(request, seen)
    reason = str(form.get("reason") or "").strip()
    if len(reason) < 3:
        entry = await _entry(request, dead_letter_id)
        return render(
            request,
            "confirm_discard.html",
            seen,
            status=422,
            entry=entry,
            error="Say why you discard it (at least 3 characters): it goes in the audit log.",
        )
    dead_letters: DeadLetters = request.app.state.dead_letters
    try:
        await dead_letters.discard(dead_letter_id, actor=seen.principal.name, reason=reason)
    except DeadLetterNotFound:
        raise ConsoleRefused(404, f"There is no dead letter {dead_letter_id}.") from None
    except ReplayRefused as exc:
        return await _refused(request, seen, dead_letter_id, f"Not discarded: {exc}.")
    return go(request, "/console/dead-letters?" + _notice(f"Discarded {dead_letter_id}."))


async def _refused(request: Request, seen: Viewer, dead_letter_id: str, message: str) -> Response:
    entry = await _entry(request, dead_letter_id)
    return render(
        request,
        "dead_letter.html",
        seen,
        status=409,
        entry=entry,
        error=message,
        **_choices(request),
    )


def _notice(text: str) -> str:
    return urlencode({"notice": text})


@router.get("/replay", response_class=HTMLResponse)
async def bulk_preview(request: Request, seen: Writer) -> HTMLResponse:
    """The dry run: how many open dead letters the filter matches, and a sample."""
    form = FilterForm.parse(request.query_params)
    matching = form.to_filter(open_only=True)
    readers = request.app.state.readers
    count = await count_matching(readers, matching)
    sample = [item(d) for d in await oldest_after(readers, matching, None, 5)]
    return render(
        request,
        "bulk_preview.html",
        seen,
        status=422 if form.problems else 200,
        form=form,
        count=count,
        sample=sample,
        **{**_choices(request), "providers": _providers_for(request, form.values.get("channel"))},
    )


@router.post("/replay")
async def bulk_start(request: Request, seen: Writer) -> Response:
    posted = await checked_form(request, seen)
    form = FilterForm.parse(posted)
    if form.problems:
        raise ConsoleRefused(422, "The filter is not valid: " + str(form.problems))
    override = str(posted.get("override_provider") or "") or None
    if override is not None:
        rules = request.app.state.rules_source.current()
        problem = provider_problem(rules, override, form.api_filters().get("channel"))
        if problem is not None:
            raise ConsoleRefused(422, f"Not started: {problem}.")
    try:
        max_per_s = float(str(posted.get("max_per_s") or "10"))
    except ValueError:
        max_per_s = 0
    if not 0 < max_per_s <= 1000:
        raise ConsoleRefused(
            422, "The rate cap must be a number above 0 and at most 1000 per second."
        )
    filters = form.api_filters()
    count = await count_matching(request.app.state.readers, filter_of(filters))
    bulk: BulkReplayer = request.app.state.bulk_replayer
    replay_id = await bulk.create(
        filters,
        count,
        actor=seen.principal.name,
        override_provider=override,
        max_per_s=max_per_s,
        reason=str(posted.get("comment") or "").strip() or None,
    )
    return go(request, f"/console/replays/{replay_id}")


@router.get("/replays/{replay_id}", response_class=HTMLResponse)
async def bulk_progress(request: Request, replay_id: str, seen: Reader) -> HTMLResponse:
    job = await request.app.state.bulk_replayer.get(replay_id)
    if job is None:
        raise ConsoleRefused(404, f"There is no bulk replay {replay_id}.")
    done = job["replayed"] + job["skipped"] + job["refused"]
    job["percent"] = 100 if job["state"] == "done" else int(100 * done / max(job["total"], 1))
    template = "_replay_progress.html" if is_htmx(request) else "replay_progress.html"
    return render(request, template, seen, job=job)
