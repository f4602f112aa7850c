"""Scenario 1, send API: accepted requests/s and latency at a fixed concurrency.

No worker runs, so only the accept path is measured: Herald's ``POST /v1/notifications``
(auth, validation, database row + outbox in one transaction, publish after commit)
against the bare FastAPI endpoint that validates and publishes with a confirm.
"""

from __future__ import annotations

from typing import Any

from bench.config import SMS_BODY
from bench.context import NOTIFICATIONS, Context, Server
from bench.report import Row, Target

SCENARIO = "1 send API"


async def _measure(ctx: Context, server: Server, name: str) -> dict[str, Any]:
    """Closed-loop load, plus the server's CPU per accepted request (warm-up included)."""
    sizes = ctx.cfg.sizes
    cpu_before = server.proc.cpu_seconds()
    result = await ctx.load(
        name,
        url=server.url + NOTIFICATIONS,
        body=SMS_BODY,
        concurrency=sizes.api_concurrency,
        warmup=sizes.api_warmup_s,
        duration=sizes.api_duration_s,
    )
    cpu = server.proc.cpu_seconds() - cpu_before
    result["server_cpu_s"] = cpu
    result["server_cpu_ms_per_request"] = (
        1000 * cpu / result["ok_all"] if result["ok_all"] else None
    )
    return result


async def run(ctx: Context) -> list[Row]:
    await ctx.prepare("api")
    async with ctx.herald_api("api") as api:
        ctx.log("scenario 1: Herald API under closed-loop load")
        herald = await _measure(ctx, api, "api-herald-load")
        herald["outbox_rows_left"] = await ctx.infra.count_outbox()
        herald["queue_depth"] = await ctx.infra.depth()
    await ctx.infra.reset()
    async with ctx.bare_api() as bare_server:
        ctx.log("scenario 1: bare FastAPI endpoint under the same load")
        bare = await _measure(ctx, bare_server, "api-bare-load")
        bare["queue_depth"] = await ctx.infra.depth()
    for result in (herald, bare):
        result.pop("records", None)
    ctx.details["api"] = {"herald": herald, "bare": bare}

    concurrency = ctx.cfg.sizes.api_concurrency
    vs = "bare FastAPI+confirm"
    h, b = herald["latency_ms"], bare["latency_ms"]
    return [
        Row(
            SCENARIO,
            f"accepted req/s (c={concurrency})",
            herald["ok_per_s"],
            bare["ok_per_s"],
            vs,
            target=Target("ratio", ">=", 0.6, goal=0.8),
        ),
        Row(SCENARIO, "latency p50", h["p50"], b["p50"], vs, unit="ms"),
        Row(SCENARIO, "latency p99", h["p99"], b["p99"], vs, unit="ms"),
        Row(
            SCENARIO,
            "server CPU ms per request",
            herald["server_cpu_ms_per_request"],
            bare["server_cpu_ms_per_request"],
            vs,
            unit="ms",
        ),
    ]
