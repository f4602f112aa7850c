"""Event-loop lag inside a Herald worker, measured without changing Herald.

``python -m bench.lagmon --out FILE -- worker [ARGS]`` runs ``herald worker ARGS`` in this
very process, with one extra task in its event loop: it sleeps ``--interval`` seconds and
records by how much the wake-up came late. That delay is what every other callback of the
loop waited at that moment (a batch holding the loop, a long synchronous step, GC), i.e.
how long an OTP that just arrived would sit before the worker even looked at it.

Samples go to ``FILE`` as lines ``wall_time lag_ms``, written as they come (line
buffered), so a worker that is killed still leaves what it measured; ``read_lag`` keeps
the samples of a time window and summarises them. Cost: one timer and one short write
per interval (20 per second by default), far below a message's cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from bench.measure import latency_summary

DEFAULT_INTERVAL_S = 0.05


async def sample_lag(out: TextIO, interval_s: float) -> None:
    """Forever: sleep ``interval_s`` and write how late the wake-up was (ms)."""
    loop = asyncio.get_running_loop()
    while True:
        began = loop.time()
        await asyncio.sleep(interval_s)
        lag_ms = max(0.0, (loop.time() - began - interval_s) * 1000)
        out.write(f"{time.time():.4f} {lag_ms:.3f}\n")


def _install(out: TextIO, interval_s: float) -> None:
    """Wrap ``herald.service.run_worker`` (the CLI imports it when the command runs) so
    the sampler runs in the worker's own loop, from start-up to shutdown."""
    import herald.service

    original = herald.service.run_worker

    async def run_worker_sampled(*args: Any, **kwargs: Any) -> None:
        sampler = asyncio.create_task(sample_lag(out, interval_s))
        try:
            await original(*args, **kwargs)
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler

    herald.service.run_worker = run_worker_sampled


def read_lag(path: Path, start: float, end: float) -> dict[str, Any]:
    """p50/p99/max of the samples taken between ``start`` and ``end`` (wall clock)."""
    values: list[float] = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and start <= float(parts[0]) <= end:
                values.append(float(parts[1]))
    return latency_summary(values)


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S)
    parser.add_argument("herald_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(list(argv) if argv is not None else None)
    herald_args = [a for a in args.herald_args if a != "--"] or ["worker"]
    if herald_args[0] != "worker":
        sys.exit("bench.lagmon only wraps `herald worker` (--processes 1)")
    out = args.out.open("a", buffering=1)
    _install(out, args.interval)
    from herald.cli import app

    try:
        app(args=herald_args, prog_name="herald")
    finally:
        out.close()


if __name__ == "__main__":
    main()
