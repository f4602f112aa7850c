"""Scenario 8, low-load latency: batching must not make a quiet system slower.

(a) The send API at concurrency 1 (closed loop, no worker): accept latency p50/p99,
Herald against the bare FastAPI + confirmed-publish endpoint. The issue's floor is
"no worse than today + 1 ms": give today's figure with ``--c1-p50-today MS`` (measured
on the commit before the change) and the row checks it; otherwise it only prints it.

(b) The full chain at a low offered rate (10/s): accept -> provider call p50/p99 per
notification (sandbox ``sent_at``), against the bare chain's accept -> consumer. The
batch histograms of that worker show whether idle batches stay at one message.
"""

from __future__ import annotations

from typing import Any

from bench.config import SMS_BODY
from bench.context import NOTIFICATIONS, Context, Server
from bench.report import Row, Target
from bench.scenarios.chain import Offer, bare_chain, herald_chain
from bench.scrape import BATCH_SIZE

SCENARIO = "8 low-load latency"


async def _c1(ctx: Context, server: Server, name: str) -> dict[str, Any]:
    sizes = ctx.cfg.sizes
    result = await ctx.load(
        name,
        url=server.url + NOTIFICATIONS,
        body=SMS_BODY,
        concurrency=1,
        warmup=sizes.api_warmup_s,
        duration=sizes.low_c1_duration_s,
    )
    result.pop("records", None)
    return result


def _c1_target(ctx: Context) -> Target:
    today = ctx.cfg.c1_p50_today_ms
    if today is None:
        return Target("note", "<=", 0, note="<= today + 1 ms (--c1-p50-today)")
    return Target("herald", "<=", today + 1.0, "ms")


async def run(ctx: Context) -> list[Row]:
    sizes = ctx.cfg.sizes
    await ctx.prepare("lowload-api")
    async with ctx.herald_api("lowload-api") as api:
        ctx.log("scenario 8: Herald API at c=1")
        herald_api = await _c1(ctx, api, "lowload-api-herald")
    await ctx.infra.reset()
    async with ctx.bare_api() as bare_server:
        ctx.log("scenario 8: bare FastAPI endpoint at c=1")
        bare_api = await _c1(ctx, bare_server, "lowload-api-bare")

    plan = Offer(sizes.low_rate, 1.0, sizes.low_duration_s, clear_limit_s=0, record=True)
    herald = await herald_chain(ctx, plan, "lowload-chain")
    bare = await bare_chain(ctx, plan, "lowload-chain")
    for result in (herald, bare):
        result.pop("records", None)
    ctx.details["lowload"] = {
        "api_c1": {"herald": herald_api, "bare": bare_api},
        "chain": {"herald": herald, "bare": bare},
    }

    ha, ba = herald_api["latency_ms"], bare_api["latency_ms"]
    hc = herald["sandbox"]["accept_to_provider_ms"]
    bc = bare["consumed"]["accept_to_consumer_ms"]
    rate = f"{sizes.low_rate:g}/s"
    api_vs, chain_vs = "bare FastAPI+confirm", "bare API -> SET NX consumer"
    size = herald["batches"][BATCH_SIZE]
    series = size["series"] if len(size["series"]) > 1 else {"": size}
    batch_rows = [
        Row(
            SCENARIO,
            f"chain at {rate}: batch size mean" + (f" [{labels}]" if labels else ""),
            stats["mean"],
            None,
            "-",
            unit="msgs",
        )
        for labels, stats in series.items()
    ]
    return [
        Row(SCENARIO, "send API c=1 p50", ha["p50"], ba["p50"], api_vs, "ms", _c1_target(ctx)),
        Row(SCENARIO, "send API c=1 p99", ha["p99"], ba["p99"], api_vs, unit="ms"),
        Row(SCENARIO, "send API c=1 req/s", herald_api["ok_per_s"], bare_api["ok_per_s"], api_vs),
        Row(
            SCENARIO, f"chain at {rate}: accept->provider p50", hc["p50"], bc["p50"], chain_vs, "ms"
        ),
        Row(
            SCENARIO, f"chain at {rate}: accept->provider p99", hc["p99"], bc["p99"], chain_vs, "ms"
        ),
        *batch_rows,
    ]
