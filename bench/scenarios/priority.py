"""Scenario 4, priority isolation: OTP latency while one worker drains a marketing backlog.

OTPs (priority ``high``) are offered at a fixed rate while the worker is busy with a
standing backlog of ``low`` marketing messages. Latency is accept -> provider call: the
sandbox record's ``sent_at`` (written in the worker when the provider "sends") minus the
client's wall-clock time just before it wrote the request. The baseline is the same OTP
load with no backlog. DESIGN §4.4: high priority never queues behind bulk traffic.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import httpx

from bench.config import API_KEY, MARKETING_BODY, OTP_BODY
from bench.context import NOTIFICATIONS, Context, Server
from bench.measure import latency_summary, wait_for
from bench.report import Row, Target
from herald import names
from herald.domain import Channel, Priority

SCENARIO = "4 priority isolation"
HIGH_QUEUE = names.work_queue(Channel.SMS, Priority.HIGH)


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def _offer_otps(ctx: Context, api: Server, name: str) -> dict[str, Any]:
    sizes = ctx.cfg.sizes
    return await ctx.load(
        name,
        url=api.url + NOTIFICATIONS,
        body=OTP_BODY,
        mode="open",
        rate=sizes.otp_rate,
        duration=sizes.otp_duration_s,
        record=True,
    )


async def _provider_latencies(
    ctx: Context, api: Server, load: dict[str, Any], otps_before: int
) -> dict[str, Any]:
    """Wait until every accepted OTP is sent, then read each one's sandbox ``sent_at``."""
    accepted = [r for r in load["records"] if 200 <= r["status"] < 300 and r["id"]]
    await wait_for(
        lambda: ctx.infra.count_status("sent", "otp"),
        lambda n: n >= otps_before + len(accepted),
        limit_s=120,
        interval=0.2,
        what="OTPs sent",
    )
    latencies: list[float] = []
    # Where the time goes: client -> row written (API), row -> worker picked it up
    # (commit, publish, broker, the worker's own queueing), pick-up -> provider call.
    stages: dict[str, list[float]] = {"api": [], "to_worker": [], "in_worker": []}
    missing = 0
    gate = asyncio.Semaphore(8)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=api.url, headers=headers, timeout=10) as client:

        async def one(record: dict[str, Any]) -> None:
            nonlocal missing
            async with gate:
                response = await client.get(
                    "/v1/sandbox/messages", params={"notification_id": record["id"]}
                )
                status = await client.get(f"{NOTIFICATIONS}/{record['id']}")
            response.raise_for_status()
            status.raise_for_status()
            items = response.json()["items"]
            if not items:
                missing += 1
                return
            sent_at = min(_epoch(i["sent_at"]) for i in items)
            latencies.append((sent_at - record["sent_at"]) * 1000)
            notification = status.json()
            if notification["attempts"]:
                created = _epoch(notification["created_at"])
                picked_up = _epoch(notification["attempts"][0]["started_at"])
                stages["api"].append((created - record["sent_at"]) * 1000)
                stages["to_worker"].append((picked_up - created) * 1000)
                stages["in_worker"].append((sent_at - picked_up) * 1000)

        await asyncio.gather(*(one(r) for r in accepted))
    http = {k: load[k] for k in ("ok", "ok_per_s", "statuses", "errors", "latency_ms")}
    return {
        "accepted": len(accepted),
        "missing_in_sandbox": missing,
        "accept_to_provider_ms": latency_summary(latencies),
        "stages_ms": {name: latency_summary(values) for name, values in stages.items()},
        "http": http,
    }


async def run(ctx: Context) -> list[Row]:
    sizes = ctx.cfg.sizes
    backlog = sizes.priority_backlog
    await ctx.prepare("priority")
    async with ctx.herald_api("priority") as api:
        async with ctx.herald_worker("priority-idle"):
            await wait_for(lambda: ctx.infra.consumers(HIGH_QUEUE), lambda n: n > 0, limit_s=30)
            ctx.log(f"scenario 4: OTPs at {sizes.otp_rate:g}/s, no backlog (baseline)")
            idle_load = await _offer_otps(ctx, api, "priority-idle-otp")
            idle = await _provider_latencies(ctx, api, idle_load, 0)
        ctx.log(f"scenario 4: pre-loading {backlog} marketing messages")
        preload = await ctx.preload(api, MARKETING_BODY, backlog, "priority")
        async with ctx.herald_worker("priority-busy") as worker:
            await wait_for(
                lambda: ctx.infra.count_status("sent", "marketing"),
                lambda n: n >= min(500, backlog // 10),
                limit_s=60,
                interval=0.1,
                what="backlog draining",
            )
            ctx.log(f"scenario 4: OTPs at {sizes.otp_rate:g}/s behind the backlog")
            busy_load = await _offer_otps(ctx, api, "priority-busy-otp")
            left = backlog - await ctx.infra.count_status("sent", "marketing")
            busy = await _provider_latencies(ctx, api, busy_load, idle["accepted"])
            worker.check_alive()
    busy["backlog_left_when_otps_ended"] = left
    busy["preload"] = preload
    ctx.details["priority"] = {"with_backlog": busy, "no_backlog": idle}
    if left <= 0:
        ctx.log("scenario 4: WARNING the backlog drained before the OTP load ended")

    h, b = busy["accept_to_provider_ms"], idle["accept_to_provider_ms"]
    vs = "same OTPs, no backlog"
    return [
        Row(SCENARIO, "OTP accept->provider p50", h["p50"], b["p50"], vs, unit="ms"),
        Row(
            SCENARIO,
            "OTP accept->provider p99",
            h["p99"],
            b["p99"],
            vs,
            unit="ms",
            target=Target("herald", "<=", 50, "ms"),
        ),
        Row(
            SCENARIO,
            "low-priority backlog left at OTP end",
            float(left),
            float(backlog),
            "backlog at start",
        ),
    ]
