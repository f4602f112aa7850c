"""Scenario 5, memory soak: does one worker's RSS stay flat over a long drain?

The reference is the same worker after a warm-up (imports done, pools and caches
filled); the figure is its RSS when the whole backlog is ``sent``. Growth beyond a few
percent over 100k messages points at something kept per message.
"""

from __future__ import annotations

from typing import Any

from bench.config import SMS_BODY
from bench.context import Context
from bench.measure import Progress, track
from bench.report import Row, Target

SCENARIO = "5 memory soak"


def _mib(kib: int | None) -> float | None:
    return kib / 1024 if kib is not None else None


async def run(ctx: Context) -> list[Row]:
    sizes = ctx.cfg.sizes
    count, warmup = sizes.soak_count, sizes.soak_warmup_count
    await ctx.prepare("soak")
    async with ctx.herald_api("soak") as api:
        ctx.log(f"scenario 5: pre-loading {count} notifications through the API")
        preload = await ctx.preload(api, SMS_BODY, count, "soak")
    ctx.log(f"scenario 5: one herald worker draining {count}, sampling its RSS")
    rss: list[tuple[float, int, int | None]] = []
    start_kib: int | None = None
    async with ctx.herald_worker("soak") as worker:

        async def sample_rss(at: float, sent: int) -> None:
            nonlocal start_kib
            kib = worker.rss_kib()
            rss.append((at, sent, kib))
            if start_kib is None and sent >= warmup:
                start_kib = kib

        progress = Progress(count, worker.spawned_at)
        await track(
            lambda: ctx.infra.count_status("sent"),
            progress,
            limit_s=max(300.0, count / 20),
            interval=1.0,
            alive=worker.check_alive,
            on_sample=sample_rss,
        )
        end_kib = worker.rss_kib()
        cpu_s = worker.cpu_seconds()
    peak_kib = max((kib for _, _, kib in rss if kib is not None), default=None)
    result: dict[str, Any] = {
        "rss_kib_after_warmup": start_kib,
        "rss_kib_end": end_kib,
        "rss_kib_peak": peak_kib,
        "growth_pct": 100 * (end_kib - start_kib) / start_kib if end_kib and start_kib else None,
        "drain": progress.summary(),
        "cpu_ms_per_msg": 1000 * cpu_s / count,
        "rss_samples": rss[:: max(1, len(rss) // 200)],
        "preload": preload,
    }
    ctx.details["soak"] = result

    reference = f"same worker after {warmup:,} msgs"
    return [
        Row(
            SCENARIO,
            f"worker RSS after {count:,} msgs",
            _mib(end_kib),
            _mib(start_kib),
            reference,
            unit="MiB",
            target=Target("ratio", "<=", 1.10),
        ),
        Row(SCENARIO, "worker RSS peak", _mib(peak_kib), _mib(start_kib), reference, unit="MiB"),
        Row(
            SCENARIO,
            f"drain msg/s over {count:,}",
            result["drain"]["rate_steady"],
            None,
            "-",
        ),
    ]
