"""Scenario 4, priority isolation: OTP latency while one worker drains a marketing backlog.

OTPs (priority ``high``) are offered at a fixed rate while the worker is busy with a
standing backlog of ``low`` marketing messages. Latency is accept -> provider call: the
sandbox record's ``sent_at`` (written in the worker when the provider "sends") minus the
client's wall-clock time just before it wrote the request. The baseline is the same OTP
load with no backlog. DESIGN §4.4: high priority never queues behind bulk traffic.
"""

from __future__ import annotations

from typing import Any

from bench.config import MARKETING_BODY, OTP_BODY
from bench.context import NOTIFICATIONS, Context, Server
from bench.lagmon import read_lag
from bench.measure import wait_for
from bench.provider_latency import provider_latencies
from bench.report import Row, Target
from herald import names
from herald.domain import Channel, Priority

SCENARIO = "4 priority isolation"
HIGH_QUEUE = names.work_queue(Channel.SMS, Priority.HIGH)


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


def _load_window(load: dict[str, Any]) -> tuple[float, float]:
    return load["began_at"], load["began_at"] + load["elapsed_s"]


async def _provider_latencies(
    ctx: Context, api: Server, load: dict[str, Any], otps_before: int
) -> dict[str, Any]:
    """Each accepted OTP's accept -> provider latency, with the load's HTTP summary."""
    result = await provider_latencies(
        ctx, api, load["records"], category="otp", sent_before=otps_before
    )
    result["http"] = {k: load[k] for k in ("ok", "ok_per_s", "statuses", "errors", "latency_ms")}
    return result


async def run(ctx: Context) -> list[Row]:
    sizes = ctx.cfg.sizes
    backlog = sizes.priority_backlog
    await ctx.prepare("priority")
    async with ctx.herald_api("priority") as api:
        idle_lag, busy_lag = (
            ctx.log_dir / f"priority-{n}-worker-lag.txt" for n in ("idle", "busy")
        )
        async with ctx.herald_worker("priority-idle", lag_out=idle_lag):
            await wait_for(lambda: ctx.infra.consumers(HIGH_QUEUE), lambda n: n > 0, limit_s=30)
            ctx.log(f"scenario 4: OTPs at {sizes.otp_rate:g}/s, no backlog (baseline)")
            idle_load = await _offer_otps(ctx, api, "priority-idle-otp")
            idle = await _provider_latencies(ctx, api, idle_load, 0)
        ctx.log(f"scenario 4: pre-loading {backlog} marketing messages")
        preload = await ctx.preload(api, MARKETING_BODY, backlog, "priority")
        async with ctx.herald_worker("priority-busy", lag_out=busy_lag) as worker:
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
    # The worker's event-loop lag while the OTPs were offered: what an OTP waits before
    # the worker's loop even runs its callback (bulk work holding the loop shows here).
    busy["event_loop_lag_ms"] = read_lag(busy_lag, *_load_window(busy_load))
    idle["event_loop_lag_ms"] = read_lag(idle_lag, *_load_window(idle_load))
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
            target=Target("herald", "<=", 50, "ms", goal=25),
        ),
        Row(
            SCENARIO,
            "worker event-loop lag p99 during OTPs",
            busy["event_loop_lag_ms"]["p99"],
            idle["event_loop_lag_ms"]["p99"],
            vs,
            unit="ms",
        ),
        Row(
            SCENARIO,
            "low-priority backlog left at OTP end",
            float(left),
            float(backlog),
            "backlog at start",
        ),
    ]
