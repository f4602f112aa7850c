"""A worker's own HTTP endpoints on ``HERALD_METRICS_PORT``: ``/healthz``, ``/readyz`` and
``/metrics``, so an orchestrator restarts a worker that is connected but consumes nothing."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from herald.readiness import Check, readiness_response, run_checks


def probe_app(checks: Mapping[str, Check]) -> Starlette:
    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> JSONResponse:
        return readiness_response(await run_checks(checks))

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
        ]
    )
