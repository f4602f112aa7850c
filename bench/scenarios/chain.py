"""Scenario 3, full chain: HTTP accept -> ``sent`` under a sustained, fixed offered load.

API and one worker run together while an open-loop client offers a fixed rate. What
counts is whether delivery keeps up: delivered/s over the measured window and how the
backlog (accepted but not yet sent) moves. The bare chain is the bare endpoint of
scenario 1 feeding a consumer that does one Redis ``SET NX`` per message and acks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bench.config import AMQP_URL, REDIS_URL, SMS_BODY
from bench.context import NOTIFICATIONS, Context, Server
from bench.measure import wait_for
from bench.procs import Proc, python_module
from bench.provider_latency import bare_latencies, provider_latencies
from bench.report import Row, Target
from bench.scrape import batch_histograms
from herald import names
from herald.domain import Channel, Priority

SCENARIO = "3 full chain"
QUEUE = names.work_queue(Channel.SMS, Priority.NORMAL)
SAMPLE_EVERY_S = 0.5

#: (wall time, delivered so far, backlog) at one instant.
Sample = tuple[float, int, int]


def at(samples: list[Sample], when: float, field: int) -> float:
    """A sampled series' value at ``when``, interpolated linearly between samples."""
    before = samples[0]
    for sample in samples:
        if sample[0] >= when:
            if sample[0] == before[0]:
                return float(sample[field])
            share = (when - before[0]) / (sample[0] - before[0])
            return before[field] + share * (sample[field] - before[field])
        before = sample
    return float(samples[-1][field])


async def _sampler(
    sample: Callable[[], Awaitable[tuple[int, int]]],
    samples: list[Sample],
    stop: asyncio.Event,
    limit_s: float,
) -> None:
    deadline = time.monotonic() + limit_s
    while not stop.is_set() and time.monotonic() < deadline:
        delivered, backlog = await sample()
        samples.append((time.time(), delivered, backlog))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_EVERY_S)


@dataclass(frozen=True, slots=True)
class Offer:
    """One open-loop load: ``rate`` per second for ``warmup_s`` + ``duration_s`` (the
    measured window), then up to ``clear_limit_s`` watching the backlog clear."""

    rate: float
    warmup_s: float
    duration_s: float
    clear_limit_s: float
    record: bool = False  # keep one record per request (send time, id)


def fitted_slope(samples: list[Sample], start: float, end: float, field: int) -> float | None:
    """Least-squares slope (per s) of a sampled series over the samples inside the window:
    steadier than end minus start, which one stall at either edge of the window skews by
    the whole stall (a 1 s stall at 200/s is 40/s off a 5 s window)."""
    inside = [(s[0], float(s[field])) for s in samples if start <= s[0] <= end]
    if len(inside) < 3:
        return None
    mean_t = sum(t for t, _ in inside) / len(inside)
    mean_v = sum(v for _, v in inside) / len(inside)
    spread = sum((t - mean_t) ** 2 for t, _ in inside)
    if not spread:
        return None
    return sum((t - mean_t) * (v - mean_v) for t, v in inside) / spread


async def offer_load(
    ctx: Context,
    server: Server,
    name: str,
    sample: Callable[[], Awaitable[tuple[int, int]]],
    check_alive: Callable[[], None],
    plan: Offer,
) -> dict[str, Any]:
    """Offer the fixed rate while sampling; then time how long the backlog takes to clear."""
    samples: list[Sample] = []
    stop = asyncio.Event()
    limit = plan.warmup_s + plan.duration_s + plan.clear_limit_s + 120
    sampling = asyncio.create_task(_sampler(sample, samples, stop, limit))
    try:
        load = await ctx.load(
            name,
            url=server.url + NOTIFICATIONS,
            body=SMS_BODY,
            mode="open",
            rate=plan.rate,
            warmup=plan.warmup_s,
            duration=plan.duration_s,
            record=plan.record,
        )
        # An open load's last send is one interval before its window ends (100 ms at
        # 10/s): sample once the window is over, or it ends unmeasured.
        window_over = load["schedule_started_at"] + plan.warmup_s + plan.duration_s
        await asyncio.sleep(max(0.0, window_over - time.time()))
        load_end = time.time()
        last = await sample()  # the sampler may have last looked 0.5 s ago
        samples.append((load_end, *last))
        check_alive()
        cleared_at = None
        if plan.clear_limit_s > 0:
            with contextlib.suppress(TimeoutError):
                await wait_for(
                    sample,
                    lambda s: s[1] == 0,
                    limit_s=plan.clear_limit_s,
                    interval=0.1,
                    what="backlog after load",
                )
                cleared_at = time.time()
    finally:
        stop.set()
        await sampling
    samples.sort()
    records = load.pop("records", None)
    window_start = load["schedule_started_at"] + plan.warmup_s
    window_end = window_start + plan.duration_s
    if not samples or samples[-1][0] < window_end:
        raise RuntimeError(f"{name}: sampling ended before the measured window did")
    delivered = at(samples, window_end, 1) - at(samples, window_start, 1)
    backlog_start, backlog_end = at(samples, window_start, 2), at(samples, window_end, 2)
    # Offered but not yet sent, as the callers see it: an API that cannot keep up holds
    # part of the backlog in its own accept queue, where the database count misses it.
    offered_by_end = int(plan.rate * (plan.warmup_s + plan.duration_s))
    result: dict[str, Any] = {
        "offered_per_s": plan.rate,
        "accepted_per_s": load["ok_per_s"],
        "delivered_per_s": delivered / plan.duration_s,
        "not_sent_at_window_end": max(0.0, offered_by_end - at(samples, window_end, 1)),
        "backlog_at_window_start": backlog_start,
        "backlog_at_window_end": backlog_end,
        "backlog_growth_per_s": (backlog_end - backlog_start) / plan.duration_s,
        "delivered_fit_per_s": fitted_slope(samples, window_start, window_end, 1),
        "backlog_slope_per_s": fitted_slope(samples, window_start, window_end, 2),
        "seconds_to_clear_after_load": (cleared_at - load_end) if cleared_at else None,
        "http": load,
        "samples": len(samples),
    }
    if records is not None:
        result["records"] = records
    return result


def default_offer(ctx: Context) -> Offer:
    """Scenario 3's load: the issue's fixed rate, the backlog watched as long as it ran
    (a detail, not a table figure; unbounded it could dominate --quick)."""
    sizes = ctx.cfg.sizes
    return Offer(
        sizes.chain_rate, sizes.chain_warmup_s, sizes.chain_duration_s, sizes.chain_duration_s
    )


async def herald_chain(ctx: Context, plan: Offer, tag: str = "chain") -> dict[str, Any]:
    """API + one worker under ``plan``; the worker's batch histograms once it is over."""
    await ctx.prepare(tag)
    async with ctx.herald_api(tag) as api, ctx.herald_worker(tag) as worker:
        await wait_for(
            lambda: ctx.infra.consumers(QUEUE), lambda n: n > 0, limit_s=30, what="consumers"
        )

        async def sample() -> tuple[int, int]:
            sent = await ctx.infra.count_status("sent")
            return sent, await ctx.infra.count_notifications() - sent

        ctx.log(f"{tag}: Herald API + worker at {plan.rate:g} req/s")
        result = await offer_load(ctx, api, f"{tag}-herald-load", sample, worker.check_alive, plan)
        result["worker_rss_kib"] = worker.rss_kib()
        result["batches"] = await batch_histograms(worker.metrics_urls)
        if plan.record:
            result["sandbox"] = await provider_latencies(
                ctx, api, result["records"], category=SMS_BODY["category"]
            )
    return result


async def bare_chain(ctx: Context, plan: Offer, tag: str = "chain") -> dict[str, Any]:
    """The bare API feeding a consumer that records each message's arrival in Redis."""
    await ctx.infra.reset()
    out = ctx.log_dir / f"{tag}-bare-consumer.json"
    consumer: Proc = python_module(
        f"{tag}-bare-consumer",
        "bench.baselines.raw_consume",
        [
            f"--amqp-url={AMQP_URL}",
            f"--queue={QUEUE}",
            "--count=0",
            "--setnx",
            f"--redis-url={REDIS_URL}",
            f"--out={out}",
        ],
        ctx.log_dir,
    )
    try:
        async with ctx.bare_api() as bare:
            await wait_for(
                lambda: ctx.infra.consumers(QUEUE), lambda n: n > 0, limit_s=30, what="consumers"
            )

            async def sample() -> tuple[int, int]:
                return int(await ctx.infra.redis.dbsize()), await ctx.infra.depth(QUEUE)

            ctx.log(f"{tag}: bare chain at {plan.rate:g} req/s")
            result = await offer_load(
                ctx, bare, f"{tag}-bare-load", sample, consumer.check_alive, plan
            )
            if plan.record:
                result["consumed"] = await bare_latencies(ctx, result["records"])
    finally:
        await consumer.stop()
    if out.exists():
        result["consumer"] = json.loads(out.read_text())
    return result


async def run(ctx: Context) -> list[Row]:
    plan = default_offer(ctx)
    herald = await herald_chain(ctx, plan)
    bare = await bare_chain(ctx, plan)
    ctx.details["chain"] = {"herald": herald, "bare": bare}
    rate = plan.rate
    vs = "bare API -> SET NX consumer"
    return [
        Row(
            SCENARIO,
            f"delivered msg/s at {rate:g}/s offered",
            herald["delivered_per_s"],
            bare["delivered_per_s"],
            vs,
            target=Target("ratio", ">=", 0.9),
        ),
        Row(
            SCENARIO,
            f"accepted req/s at {rate:g}/s offered",
            herald["accepted_per_s"],
            bare["accepted_per_s"],
            vs,
        ),
        Row(
            SCENARIO,
            "offered, not yet sent at end (msgs)",
            herald["not_sent_at_window_end"],
            bare["not_sent_at_window_end"],
            vs,
        ),
        Row(
            SCENARIO,
            "accepted, not yet sent: growth msg/s",
            herald["backlog_growth_per_s"],
            bare["backlog_growth_per_s"],
            vs,
        ),
        Row(
            SCENARIO,
            f"HTTP latency p99 at {rate:g}/s",
            herald["http"]["latency_ms"]["p99"],
            bare["http"]["latency_ms"]["p99"],
            vs,
            unit="ms",
        ),
    ]
