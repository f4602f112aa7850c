"""Liveness, readiness (database, broker, Redis) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from herald.readiness import Check, readiness_response, run_checks
from herald.storage.probe import probe_write, process_name

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready when a write commits, the broker link is up, Redis answers and (under
    ``herald dev``) every consumer of this process is attached."""
    state = request.app.state

    async def database() -> None:
        await probe_write(state.engine, process_name("api"))

    async def broker() -> None:
        if not state.publisher.connected:
            raise ConnectionError("RabbitMQ connection is down")

    async def redis() -> None:
        await state.redis.ping()

    checks: dict[str, Check] = {"database": database, "broker": broker, "redis": redis}
    checks.update(getattr(state, "extra_readiness_checks", {}))
    return readiness_response(await run_checks(checks))


@router.get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
