"""On-call's view of the providers: breaker, recent success rate, latency, cost; drain one."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict

from dlq.audit import record_now
from producer.auth import Principal
from producer.deps import require
from producer.problems import Problem
from router.breaker import Override, displayed_state
from router.health import BreakerBoard

router = APIRouter(prefix="/v1/providers", tags=["providers"])


async def provider_view(board: BreakerBoard, name: str, spec: Any) -> dict[str, Any]:
    breaker = (await board.states([name]))[name]
    stats = await board.stats(name)
    return {
        "name": name,
        "type": spec.type,
        "channel": spec.channel.value,
        "breaker": displayed_state(breaker).value,
        "override": breaker.override.value if breaker.override else None,
        "success_rate": stats.success_rate,
        "calls": stats.calls,
        "failures": stats.failures,
        "p95_ms": stats.p95_ms,
        "cost": spec.cost,
        "max_per_s": spec.max_per_s,
    }


@router.get("")
async def list_providers(
    request: Request, _: Annotated[Principal, Depends(require("routing:read"))]
) -> dict[str, Any]:
    """Every provider of the rules in force; rates cover the breaker window."""
    rules = request.app.state.rules_source.current()
    board: BreakerBoard = request.app.state.breakers
    return {"items": [await provider_view(board, n, s) for n, s in rules.providers.items()]}


class BreakerOverride(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: Literal["open", "closed", "auto"]


@router.put("/{name}/breaker")
async def override_breaker(
    request: Request,
    name: str,
    body: BreakerOverride,
    principal: Annotated[Principal, Depends(require("routing:write"))],
) -> dict[str, Any]:
    """``open`` drains the provider, ``closed`` forces traffic through, ``auto`` hands
    control back to the failure rate."""
    found = await set_breaker(request.app.state, name, body.state, actor=principal.name)
    if found is None:
        raise Problem(404, "Not found", f"no provider named {name!r}")
    return found


async def set_breaker(state: Any, name: str, mode: str, *, actor: str) -> dict[str, Any] | None:
    """Force a provider's breaker ``open`` or ``closed``, or hand it back (``auto``), and
    audit it; ``None`` when the rules in force have no such provider. The console's
    buttons call this too."""
    rules = state.rules_source.current()
    if name not in rules.providers:
        return None
    board: BreakerBoard = state.breakers
    await board.force(name, None if mode == "auto" else Override(mode))
    await record_now(
        state.sessions, actor=actor, action="breaker.override", target=name, details={"state": mode}
    )
    return await provider_view(board, name, rules.providers[name])
