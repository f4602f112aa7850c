"""Scenario 7, one vs two worker processes: does ``herald worker --processes 2`` use the
second core?

The same backlog as scenario 2 is pre-loaded twice and drained once by
``herald worker --processes 1`` and once by ``--processes 2`` (the supervisor and its two
children); the figure is the steady msg/s (10 -> 90 % sent) and the ratio two / one. On
this 2-core box the load generator is idle during a drain, but RabbitMQ, Redis and the
database still share the cores, so 2.0x is out of reach; below 1.0x means the processes
contend (e.g. for SQLite's write lock) more than they add. The spawn -> all sent rate
includes the start-up of three interpreters (supervisor and children), which dominates
a --quick drain; the steady rate and steady CPU per message leave it out.
"""

from __future__ import annotations

from bench.context import Context
from bench.report import Row
from bench.scenarios.drain import herald_drain

SCENARIO = "7 worker processes"


async def run(ctx: Context) -> list[Row]:
    count = ctx.cfg.sizes.procs_count
    one = await herald_drain(ctx, count, tag="procs-1", processes=1, sample_lag=False)
    two = await herald_drain(ctx, count, tag="procs-2", processes=2, sample_lag=False)
    ctx.details["processes"] = {"one": one, "two": two}
    vs = "--processes 1"
    return [
        Row(SCENARIO, "--processes 2: msg/s, steady", two["rate_steady"], one["rate_steady"], vs),
        Row(
            SCENARIO,
            f"--processes 2: msg/s, spawn -> {count:,} sent",
            two["rate_total"],
            one["rate_total"],
            vs,
        ),
        Row(
            SCENARIO,
            "--processes 2: worker CPU ms/msg, steady",
            two["cpu_ms_per_msg_steady"],
            one["cpu_ms_per_msg_steady"],
            vs,
            unit="ms",
        ),
        Row(
            SCENARIO,
            "--processes 2: spawn -> first sent",
            two["spawn_to_first_sent_s"],
            one["spawn_to_first_sent_s"],
            vs,
            unit="s",
        ),
    ]
