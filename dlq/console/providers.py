"""Breaker overrides from the overview: drain a vendor (force open), force it closed, or
hand it back to its failure rate (auto). Audited like the API's override."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from dlq.console.web import ConsoleRefused, Viewer, checked_form, go, needs
from producer.routes_providers import set_breaker

router = APIRouter(prefix="/console/providers", include_in_schema=False)
MODES = ("open", "closed", "auto")


@router.post("/{name}/breaker")
async def override_breaker(
    request: Request, name: str, seen: Annotated[Viewer, Depends(needs("routing:write"))]
) -> Response:
    form = await checked_form(request, seen)
    mode = str(form.get("state") or "")
    if mode not in MODES:
        raise ConsoleRefused(422, "The breaker state must be open, closed or auto.")
    if await set_breaker(request.app.state, name, mode, actor=seen.principal.name) is None:
        raise ConsoleRefused(404, f"There is no provider named {name!r} in the rules.")
    return go(request, "/console?" + f"notice=Breaker+of+{name}+set+to+{mode}.")
