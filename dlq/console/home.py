"""The overview: what is dead and why, which breakers are open, how deep the queues
are and how many sends went out per minute; it refreshes itself every 10 seconds."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from dlq.console.overview import bar_heights, queue_depths, sends_per_minute
from dlq.console.web import Viewer, is_htmx, render, viewer
from dlq.queries import open_counts
from herald import names
from producer.routes_providers import provider_view
from router.health import BreakerBoard

router = APIRouter(prefix="/console", include_in_schema=False)


@router.get("", response_class=HTMLResponse)
async def overview(request: Request, seen: Annotated[Viewer, Depends(viewer)]) -> HTMLResponse:
    state = request.app.state
    context: dict[str, Any] = {"dlq_names": {names.DLQ}}
    if seen.can("dlq:read"):
        context["dead"] = await open_counts(state.readers)
        context["minutes"] = bar_heights(await sends_per_minute(state.readers))
        context["depths"] = await queue_depths(state.console_queues)
    if seen.can("routing:read"):
        board: BreakerBoard = state.breakers
        rules = state.rules_source.current()
        context["providers"] = [
            await provider_view(board, name, spec) for name, spec in rules.providers.items()
        ]
        context["rules_version"] = rules.version
    template = "_overview_panels.html" if is_htmx(request) else "overview.html"
    return render(request, template, seen, **context)
