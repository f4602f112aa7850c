"""Sandbox providers (DESIGN §12): what they "sent", and their behaviour at run time."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from producer.auth import Principal
from producer.deps import require
from producer.problems import Problem
from providers.sandbox import SandboxBehaviour, SandboxStore

router = APIRouter(prefix="/v1/sandbox", tags=["sandbox"])


class BehaviourRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["ok", "transient", "permanent"]
    fail_rate: float = Field(1.0, ge=0, le=1)
    latency_ms: float = Field(0, ge=0, le=60_000)


def _store(request: Request) -> SandboxStore:
    if not request.app.state.settings.sandbox_on:
        raise Problem(404, "Not found", "sandbox providers are disabled (HERALD_SANDBOX_ENABLED)")
    return request.app.state.sandbox


@router.get("/messages")
async def list_messages(
    request: Request,
    _: Annotated[Principal, Depends(require("send"))],
    notification_id: str | None = None,
    to: str | None = None,
    provider: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> dict[str, Any]:
    items = await _store(request).list(
        notification_id=notification_id, to=to, provider=provider, limit=limit
    )
    keys = ("notification_id", "provider", "to", "subject", "body", "data", "sent_at", "generation")
    return {"items": [{k: item.get(k) for k in keys} for item in items]}


@router.delete("/messages", status_code=204)
async def clear_messages(
    request: Request, _: Annotated[Principal, Depends(require("admin"))]
) -> Response:
    await _store(request).clear()
    return Response(status_code=204)


@router.get("/providers")
async def list_behaviours(
    request: Request, _: Annotated[Principal, Depends(require("send"))]
) -> dict[str, Any]:
    behaviours = await _store(request).all_behaviours()
    names = request.app.state.sandbox_providers
    return {
        "items": [
            {"name": n, **vars_of(behaviours.get(n, SandboxBehaviour()))} for n in sorted(names)
        ]
    }


@router.put("/providers/{name}")
async def set_behaviour(
    request: Request,
    name: str,
    body: BehaviourRequest,
    _: Annotated[Principal, Depends(require("admin"))],
) -> dict[str, Any]:
    """Make one sandbox provider slow or failing, for every worker at once."""
    if name not in request.app.state.sandbox_providers:
        raise Problem(404, "Not found", f"no sandbox provider named {name!r}")
    behaviour = SandboxBehaviour(
        mode=body.mode, fail_rate=body.fail_rate, latency_ms=body.latency_ms
    )
    await _store(request).set_behaviour(name, behaviour)
    return {"name": name, **vars_of(behaviour)}


def vars_of(behaviour: SandboxBehaviour) -> dict[str, Any]:
    return {
        "mode": behaviour.mode,
        "fail_rate": behaviour.fail_rate,
        "latency_ms": behaviour.latency_ms,
    }
