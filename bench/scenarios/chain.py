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
from typing import Any

from bench.config import AMQP_URL, REDIS_URL, SMS_BODY
from bench.context import NOTIFICATIONS, Context, Server
from bench.measure import wait_for
from bench.procs import Proc, python_module
from bench.report import Row, Target
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


async def _offer(
    ctx: Context,
    server: Server,
    name: str,
    sample: Callable[[], Awaitable[tuple[int, int]]],
    check_alive: Callable[[], None],
) -> dict[str, Any]:
    """Offer the fixed rate while sampling; then time how long the backlog takes to clear."""
    sizes = ctx.cfg.sizes
    samples: list[Sample] = []
    stop = asyncio.Event()
    # How long the backlog takes to clear once the load stops: watched for at most as long
    # as the load ran (a detail, not a table figure; unbounded it could dominate --quick).
    clear_limit_s = sizes.chain_duration_s
    limit = 2 * clear_limit_s + 120
    sampling = asyncio.create_task(_sampler(sample, samples, stop, limit))
    try:
        load = await ctx.load(
            name,
            url=server.url + NOTIFICATIONS,
            body=SMS_BODY,
            mode="open",
            rate=sizes.chain_rate,
            warmup=sizes.chain_warmup_s,
            duration=sizes.chain_duration_s,
        )
        load_end = time.time()
        last = await sample()  # the sampler may have last looked 0.5 s ago
        samples.append((load_end, *last))
        check_alive()
        cleared_at = None
        with contextlib.suppress(TimeoutError):
            await wait_for(
                sample,
                lambda s: s[1] == 0,
                limit_s=clear_limit_s,
                interval=0.1,
                what="backlog after load",
            )
            cleared_at = time.time()
    finally:
        stop.set()
        await sampling
    samples.sort()
    load.pop("records", None)
    window_start = load["schedule_started_at"] + sizes.chain_warmup_s
    window_end = window_start + sizes.chain_duration_s
    if not samples or samples[-1][0] < window_end:
        raise RuntimeError(f"{name}: sampling ended before the measured window did")
    delivered = at(samples, window_end, 1) - at(samples, window_start, 1)
    backlog_start, backlog_end = at(samples, window_start, 2), at(samples, window_end, 2)
    # Offered but not yet sent, as the callers see it: an API that cannot keep up holds
    # part of the backlog in its own accept queue, where the database count misses it.
    offered_by_end = int(sizes.chain_rate * (sizes.chain_warmup_s + sizes.chain_duration_s))
    return {
        "offered_per_s": sizes.chain_rate,
        "accepted_per_s": load["ok_per_s"],
        "delivered_per_s": delivered / sizes.chain_duration_s,
        "not_sent_at_window_end": max(0.0, offered_by_end - at(samples, window_end, 1)),
        "backlog_at_window_start": backlog_start,
        "backlog_at_window_end": backlog_end,
        "backlog_growth_per_s": (backlog_end - backlog_start) / sizes.chain_duration_s,
        "seconds_to_clear_after_load": (cleared_at - load_end) if cleared_at else None,
        "http": load,
        "samples": len(samples),
    }


async def herald_chain(ctx: Context) -> dict[str, Any]:
    await ctx.prepare("chain")
    async with ctx.herald_api("chain") as api, ctx.herald_worker("chain") as worker:
        await wait_for(
            lambda: ctx.infra.consumers(QUEUE), lambda n: n > 0, limit_s=30, what="consumers"
        )

        async def sample() -> tuple[int, int]:
            sent = await ctx.infra.count_status("sent")
            return sent, await ctx.infra.count_notifications() - sent

        ctx.log(f"scenario 3: Herald API + worker at {ctx.cfg.sizes.chain_rate:g} req/s")
        result = await _offer(ctx, api, "chain-herald-load", sample, worker.check_alive)
        result["worker_rss_kib"] = worker.rss_kib()
    return result


async def bare_chain(ctx: Context) -> dict[str, Any]:
    await ctx.infra.reset()
    out = ctx.log_dir / "chain-bare-consumer.json"
    consumer: Proc = python_module(
        "chain-bare-consumer",
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

            ctx.log(f"scenario 3: bare chain at {ctx.cfg.sizes.chain_rate:g} req/s")
            result = await _offer(ctx, bare, "chain-bare-load", sample, consumer.check_alive)
    finally:
        await consumer.stop()
    if out.exists():
        result["consumer"] = json.loads(out.read_text())
    return result


async def run(ctx: Context) -> list[Row]:
    herald = await herald_chain(ctx)
    bare = await bare_chain(ctx)
    ctx.details["chain"] = {"herald": herald, "bare": bare}
    rate = ctx.cfg.sizes.chain_rate
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
