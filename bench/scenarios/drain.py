"""Scenario 2, worker drain: one ``herald worker`` process against a standing backlog.

The backlog goes in through the API with no worker running; once the outbox is empty
the worker starts and the clock runs from its spawn until the database counts every
notification ``sent``. Baselines drain the same count on the same broker: (a) a raw
aio-pika consume+ack process, the ceiling for one Python consumer; (b) Celery workers
running a no-op task each (one per pool kind), the framework Herald should at least
match.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

from bench import profile
from bench.config import AMQP_URL, RESULTS_DIR, SMS_BODY
from bench.context import Context
from bench.infra import CELERY_QUEUE
from bench.lagmon import read_lag
from bench.measure import Progress, track, wait_for
from bench.procs import ProcessFailed, celery_worker, python_module, running
from bench.report import Row, Target
from bench.scrape import BATCH_SIZE, BATCH_WAIT, batch_histograms
from herald import names
from herald.domain import Category, Channel, Envelope, Priority

SCENARIO = "2 worker drain"
#: The issue's floor for the steady drain against Celery solo; its goal beside it.
DRAIN_TARGET = Target("ratio", ">=", 0.7, goal=1.0)
PROFILE_RAW = RESULTS_DIR / "profile-drain.txt"
PROFILE_DIGEST = RESULTS_DIR / "profile-drain-digest.txt"


def _interval(count: int) -> float:
    """Poll often enough that the poll step is ~1 % of a drain, rarely enough to be cheap."""
    return 0.1 if count <= 5_000 else 0.25


def _limit_s(count: int) -> float:
    return max(120.0, count / 20)


def _result(progress: Progress, cpu_s: float | None) -> dict[str, Any]:
    summary: dict[str, Any] = progress.summary()
    summary["cpu_s"] = cpu_s
    summary["cpu_ms_per_msg"] = 1000 * cpu_s / progress.target if cpu_s is not None else None
    elapsed = summary["elapsed_s"]
    summary["cpu_utilisation"] = cpu_s / elapsed if cpu_s is not None and elapsed else None
    return summary


def _steady_cpu_ms(marks: dict[float, tuple[int, float]]) -> float | None:
    if 0.1 not in marks or 0.9 not in marks or marks[0.9][0] <= marks[0.1][0]:
        return None
    (sent_low, cpu_low), (sent_high, cpu_high) = marks[0.1], marks[0.9]
    return 1000 * (cpu_high - cpu_low) / (sent_high - sent_low)


async def herald_drain(
    ctx: Context, count: int, *, tag: str = "drain", processes: int = 1, sample_lag: bool = True
) -> dict[str, Any]:
    """Pre-load ``count``, then time ``herald worker [--processes N]`` draining it.

    With ``sample_lag`` (one process only) the worker runs under ``bench.lagmon``; the lag
    reported is that of the steady part (10 -> 90 % sent). The batch histograms are
    scraped from every worker process once the backlog is sent.
    """
    await ctx.prepare(tag)
    async with ctx.herald_api(tag) as api:
        ctx.log(f"{tag}: pre-loading {count} notifications through the API")
        preload = await ctx.preload(api, SMS_BODY, count, tag)
    lag_out = ctx.log_dir / f"{tag}-worker-lag.txt" if sample_lag else None
    ctx.log(f"{tag}: {processes} herald worker process(es) draining {preload['queue_depth']}")
    async with ctx.herald_worker(tag, processes=processes, lag_out=lag_out) as worker:
        profiler = None
        profiling = ctx.cfg.profile and tag == "drain"

        # CPU at the first samples past 10 % and 90 % sent: the steady CPU per message,
        # without the start-up of one or three interpreters (--processes 2).
        cpu_marks: dict[float, tuple[int, float]] = {}

        async def on_sample(_at: float, sent: int) -> None:
            nonlocal profiler
            for share in (0.1, 0.9):
                if share not in cpu_marks and sent >= count * share:
                    cpu_marks[share] = (sent, worker.cpu_seconds())
            if profiling and profiler is None and sent >= count * 0.05:
                PROFILE_RAW.parent.mkdir(parents=True, exist_ok=True)
                profiler = profile.start(worker, PROFILE_RAW, 600, ctx.log_dir)

        progress = Progress(count, worker.spawned_at)
        await track(
            lambda: ctx.infra.count_status("sent"),
            progress,
            limit_s=_limit_s(count),
            interval=_interval(count),
            alive=worker.check_alive,
            on_sample=on_sample,
        )
        result = _result(progress, worker.cpu_seconds())
        result["cpu_ms_per_msg_steady"] = _steady_cpu_ms(cpu_marks)
        first = progress.time_reaching(1)
        result["spawn_to_first_sent_s"] = first - worker.spawned_at if first else None
        result["processes"] = processes
        result["rss_kib_end"] = worker.rss_kib()
        result["batches"] = await batch_histograms(worker.metrics_urls)
        if profiler is not None:
            await profiler.interrupt()
    if lag_out is not None:
        start = progress.time_reaching(count * 0.1) or worker.spawned_at
        end = progress.time_reaching(count * 0.9) or time.time()
        result["event_loop_lag_ms"] = read_lag(lag_out, start, end)
    result["preload"] = preload
    if profiler is not None and PROFILE_RAW.exists():
        PROFILE_DIGEST.write_text(profile.digest(PROFILE_RAW))
        result["profile"] = {"raw": str(PROFILE_RAW), "digest": str(PROFILE_DIGEST)}
    return result


async def raw_drain(ctx: Context, count: int) -> dict[str, Any]:
    """Baseline (a): the same count of Herald-shaped envelopes, consumed and acked."""
    await ctx.infra.reset()
    envelope = Envelope(
        id=uuid.uuid4().hex,
        channel=Channel.SMS,
        to=SMS_BODY["to"],
        category=Category.TRANSACTIONAL,
        priority=Priority.NORMAL,
        body=SMS_BODY["body"],
    )
    await ctx.infra.publish_copies(envelope.routing_key, envelope.to_bytes(), count)
    queue = names.work_queue(Channel.SMS, Priority.NORMAL)
    ctx.log(f"scenario 2: raw aio-pika consumer draining {count} messages")
    out = ctx.log_dir / "drain-raw-consume.json"
    proc = python_module(
        "drain-raw-consume",
        "bench.baselines.raw_consume",
        [f"--amqp-url={AMQP_URL}", f"--queue={queue}", f"--count={count}", f"--out={out}"],
        ctx.log_dir,
    )
    async with running(proc):
        code = await proc.wait(_limit_s(count))
    if code != 0 or not out.exists():
        raise ProcessFailed(f"raw consumer failed ({code}):\n{proc.log_tail()}")
    marks = json.loads(out.read_text())
    if marks["acked"] < count:
        raise ProcessFailed(f"raw consumer acked {marks['acked']} of {count}")
    progress = Progress(count, proc.spawned_at)
    for mark, share in (("p10", 0.1), ("p90", 0.9), ("finished_at", 1.0)):
        progress.add(marks[mark], int(count * share))
    return _result(progress, marks["cpu_s"])


async def celery_drain(ctx: Context, count: int, pool: str) -> dict[str, Any]:
    """Baseline (b): a Celery worker draining ``count`` no-op tasks queued beforehand."""
    await ctx.infra.reset()
    enqueue = python_module(
        "drain-celery-enqueue", "bench.baselines.celery_app", ["enqueue", str(count)], ctx.log_dir
    )
    async with running(enqueue):
        if await enqueue.wait(_limit_s(count)) != 0:
            raise ProcessFailed(f"celery enqueue failed:\n{enqueue.log_tail()}")
    await wait_for(
        lambda: ctx.infra.depth(CELERY_QUEUE),
        lambda depth: depth >= count,
        limit_s=60,
        what="celery queue depth",
    )
    concurrency = 1 if pool == "solo" else os.cpu_count() or 2
    ctx.log(f"scenario 2: celery worker (-P {pool} -c {concurrency}) draining {count} tasks")
    worker = celery_worker(pool, concurrency, ctx.log_dir)
    # Measured once the counter is full: no need to wait out Celery's warm shutdown.
    async with running(worker, stop_limit_s=3):
        progress = Progress(count, worker.spawned_at)

        async def done() -> int:
            return int(await ctx.infra.redis.get("bench:celery:done") or 0)

        await track(
            done,
            progress,
            limit_s=_limit_s(count),
            interval=_interval(count),
            alive=worker.check_alive,
        )
        result = _result(progress, worker.cpu_seconds())
    result["pool"] = f"{pool} -c {concurrency}"
    return result


async def run(ctx: Context) -> list[Row]:
    count = ctx.cfg.sizes.drain_count
    herald = await herald_drain(ctx, count)
    raw = await raw_drain(ctx, count)
    celery = {pool: await celery_drain(ctx, count, pool) for pool in ctx.cfg.celery_pools}
    ctx.details["drain"] = {"herald": herald, "raw_aio_pika": raw, "celery": celery}

    metric = f"msg/s, spawn -> {count:,} sent"
    rows = [Row(SCENARIO, metric, herald["rate_total"], raw["rate_total"], "raw aio-pika ack")]
    for result in celery.values():
        rows.append(
            Row(
                SCENARIO,
                metric,
                herald["rate_total"],
                result["rate_total"],
                f"celery {result['pool']}",
                target=DRAIN_TARGET,
            )
        )
    first_pool = next(iter(celery.values()), None)
    if first_pool is not None:
        rows.append(
            Row(
                SCENARIO,
                "msg/s, steady (10 -> 90 %)",
                herald["rate_steady"],
                first_pool["rate_steady"],
                f"celery {first_pool['pool']}",
                target=DRAIN_TARGET,
            )
        )
    rows.append(
        Row(
            SCENARIO,
            "worker CPU ms per message",
            herald["cpu_ms_per_msg"],
            raw["cpu_ms_per_msg"],
            "raw aio-pika ack",
            unit="ms",
            target=Target("herald", "<=", 0.8, "ms", goal=0.4),
        )
    )
    rows += lag_rows(SCENARIO, herald.get("event_loop_lag_ms"))
    rows += batch_rows(SCENARIO, herald["batches"])
    return rows


def lag_rows(scenario: str, lag: dict[str, Any] | None) -> list[Row]:
    """The worker's event-loop lag during the steady drain (no baseline: lower is better)."""
    lag = lag or {}
    return [
        Row(scenario, f"worker event-loop lag {q} (10->90 %)", lag.get(q), None, "-", unit="ms")
        for q in ("p50", "p99", "max")
    ]


def batch_rows(scenario: str, batches: dict[str, Any]) -> list[Row]:
    """Count, mean, p50 and p99 of the batch histograms, one set per label set when the
    worker labels them (e.g. by stage); n/a before batched lanes exist."""
    rows: list[Row] = []
    for name, label, unit, scale in (
        (BATCH_SIZE, "batch size", "msgs", 1.0),
        (BATCH_WAIT, "batch wait", "ms", 1000.0),
    ):
        found = batches[name]
        series = found["series"] if len(found["series"]) > 1 else {"": found}
        for labels, stats in series.items():
            title = f"{label} [{labels}]" if labels else label
            rows.append(Row(scenario, f"{title}: count", stats["count"], None, "-"))
            rows += [
                Row(
                    scenario,
                    f"{title}: {stat}",
                    stats[stat] * scale if stats[stat] is not None else None,
                    None,
                    "-",
                    unit=unit,
                )
                for stat in ("mean", "p50", "p99")
            ]
    return rows
