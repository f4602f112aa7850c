"""Sandbox providers (DESIGN §12): what they "sent", and their behaviour at run time.

Every route needs the ``sandbox`` scope (or ``admin``). A non-admin sees only what the
sandbox received for notifications its own key sent, and never an OTP's text; clearing
every caller's records is for admins only. With the sandbox off these routes are 404.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError

from herald.logs import get_logger
from producer.auth import Principal
from producer.deps import require
from producer.problems import Problem
from producer.validation import StrictFloat
from providers.sandbox import Query as SandboxQuery
from providers.sandbox import SandboxBehaviour, SandboxStore

router = APIRouter(prefix="/v1/sandbox", tags=["sandbox"])
log = get_logger(__name__)
T = TypeVar("T")
ITEM_FIELDS = (
    "notification_id",
    "provider",
    "to",
    "subject",
    "body",
    "data",
    "sent_at",
    "generation",
    "caller",
    "category",
)


class BehaviourRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["ok", "transient", "permanent"]
    fail_rate: StrictFloat = Field(1.0, ge=0, le=1)
    latency_ms: StrictFloat = Field(0, ge=0, le=60_000)


def _store(request: Request) -> SandboxStore:
    if not request.app.state.settings.sandbox_on:
        raise Problem(404, "Not found", "sandbox providers are disabled (HERALD_SANDBOX_ENABLED)")
    store: SandboxStore = request.app.state.sandbox
    return store


async def _redis(call: Awaitable[T]) -> T:
    """The sandbox lives in Redis: unreachable (or a stale connection) is a 503."""
    try:
        return await call
    except (RedisError, OSError) as exc:
        log.warning("sandbox_redis_unavailable", error=repr(exc))
        raise Problem(
            503,
            "Service unavailable",
            "the sandbox's records are in Redis, which is unreachable; retry later",
            headers={"Retry-After": "2"},
        ) from None


@router.get("/messages")
async def list_messages(
    request: Request,
    principal: Annotated[Principal, Depends(require("sandbox"))],
    notification_id: Annotated[str | None, Query(max_length=64)] = None,
    to: Annotated[str | None, Query(max_length=4096)] = None,
    provider: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> dict[str, Any]:
    """Newest first. Admins see every caller's records and OTP texts while the OTP is
    valid; anyone else only its own key's, OTP texts masked."""
    admin = "admin" in principal.scopes
    query = SandboxQuery(
        notification_id=notification_id,
        to=to,
        provider=provider,
        caller=None if admin else principal.name,
        reveal_otp=admin,
        limit=limit,
    )
    items = await _redis(_store(request).find(query))
    return {"items": [{k: item.get(k) for k in ITEM_FIELDS} for item in items]}


@router.delete("/messages", status_code=204)
async def clear_messages(
    request: Request, _: Annotated[Principal, Depends(require("admin"))]
) -> Response:
    """Forget every caller's records (admins only: it is everyone's test evidence)."""
    await _redis(_store(request).clear())
    return Response(status_code=204)


@router.get("/providers")
async def list_behaviours(
    request: Request, _: Annotated[Principal, Depends(require("sandbox"))]
) -> dict[str, Any]:
    behaviours = await _redis(_store(request).all_behaviours())
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
    _: Annotated[Principal, Depends(require("sandbox"))],
) -> dict[str, Any]:
    """Make one sandbox provider slow or failing, for every worker at once (each sees it
    within HERALD_SANDBOX_CACHE_S)."""
    store = _store(request)
    if name not in request.app.state.sandbox_providers:
        raise Problem(404, "Not found", f"no sandbox provider named {name!r}")
    behaviour = SandboxBehaviour(
        mode=body.mode, fail_rate=body.fail_rate, latency_ms=body.latency_ms
    )
    await _redis(store.set_behaviour(name, behaviour))
    return {"name": name, **vars_of(behaviour)}


def vars_of(behaviour: SandboxBehaviour) -> dict[str, Any]:
    return {
        "mode": behaviour.mode,
        "fail_rate": behaviour.fail_rate,
        "latency_ms": behaviour.latency_ms,
    }
