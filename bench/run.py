"""Entry point: ``python -m bench.run [--quick] [--only NAME] [--db postgresql] ...``.

Runs the scenarios in order, each from a clean slate (queues purged, Redis db 14
flushed, a fresh database), prints one table of Herald figures beside their baselines,
and writes ``bench/results/latest.json``. A scenario that fails is reported and the
others still run; the exit code is 1 if any failed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import fcntl
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

from bench.config import (
    DEFAULT_LOG_LEVEL,
    FULL,
    POSTGRES_URL,
    QUICK,
    REDIS_DB,
    RESULTS_DIR,
    ROOT,
    VHOST,
    BenchConfig,
    Sizes,
)
from bench.context import Context
from bench.infra import Infra, ensure_postgres_database, vhost_connections
from bench.procs import kill_all
from bench.report import Row, table, write_json
from bench.scenarios import api, chain, drain, lowload, priority, processes, soak, sweep

Scenario = Callable[[Context], Awaitable[list[Row]]]
#: In run order: the long soak last, so a partial full run still has everything else.
SCENARIOS: dict[str, Scenario] = {
    "api": api.run,
    "lowload": lowload.run,
    "drain": drain.run,
    "processes": processes.run,
    "chain": chain.run,
    "sweep": sweep.run,
    "priority": priority.run,
    "soak": soak.run,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description="Herald benchmarks beside their baselines."
    )
    parser.add_argument("--quick", action="store_true", help="small counts (< 2 min)")
    parser.add_argument(
        "--only", choices=sorted(SCENARIOS), action="append", help="run only this scenario"
    )
    parser.add_argument(
        "--db",
        choices=["sqlite", "postgresql"],
        default="sqlite",
        help=f"sqlite: a fresh file per scenario; postgresql: {POSTGRES_URL} (created if "
        "missing, its tables emptied) unless --database-url says otherwise",
    )
    parser.add_argument(
        "--database-url",
        help="e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/herald_bench (its tables are "
        "emptied: never a database the test suite uses)",
    )
    parser.add_argument(
        "--log-level",
        default=DEFAULT_LOG_LEVEL,
        type=str.upper,
        help=f"HERALD_LOG_LEVEL of every Herald process (default {DEFAULT_LOG_LEVEL}; "
        "Herald's own default is INFO)",
    )
    parser.add_argument(
        "--otp-backlog",
        type=int,
        help="marketing backlog behind the OTPs of the priority scenario "
        f"(default {FULL.priority_backlog:,}, --quick {QUICK.priority_backlog:,})",
    )
    parser.add_argument(
        "--sweep-rates",
        type=lambda text: tuple(float(r) for r in text.split(",")),
        help="offered rates of the sustained sweep, e.g. 50,100,200,400,800",
    )
    parser.add_argument(
        "--c1-p50-today",
        type=float,
        metavar="MS",
        help="send API c=1 p50 measured before the change: the low-load floor is it + 1 ms",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the Herald worker during the drain scenario (slows it a little)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, SQLite)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "latest.json")
    return parser.parse_args(argv)


def _commit() -> str:
    """The measured commit; ``BENCH_COMMIT`` labels a run from an exported tree (no .git)."""
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    try:
        found = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return found.stdout.strip()


def _meta(
    args: argparse.Namespace, cfg: BenchConfig, started: float, load: dict[str, Any]
) -> dict[str, Any]:
    return {
        "mode": "quick" if args.quick else "full",
        "database": "postgresql" if (cfg.database_url or "").startswith("postgresql") else "sqlite",
        "log_level": cfg.log_level,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "commit": _commit(),
        "python": sys.version.split()[0],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "config": cfg.describe(),
        "loadavg": load,
    }


def _sizes(args: argparse.Namespace) -> Sizes:
    """The mode's counts with the command line's overrides."""
    sizes = QUICK if args.quick else FULL
    overrides: dict[str, Any] = {}
    if args.otp_backlog is not None:
        overrides["priority_backlog"] = args.otp_backlog
    if args.sweep_rates:
        overrides["sweep_rates"] = args.sweep_rates
    return dataclasses.replace(sizes, **overrides)


def _lock_or_exit() -> TextIO:
    """One run per vhost and Redis db: a second one would purge the first one's queues
    and flush its Redis mid-scenario (seen: a drain of 0 messages, a worker fed another
    run's notifications). Held until this process exits."""
    path = Path(tempfile.gettempdir()) / f"herald-bench-{VHOST}-{REDIS_DB}.lock"
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        sys.exit(
            f"another bench run uses vhost {VHOST} / Redis db {REDIS_DB} "
            f"(pid {handle.read().strip() or '?'}); set BENCH_VHOST and BENCH_REDIS_DB "
            "to run beside it"
        )
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


async def _others_on_vhost(ctx: Context, when: str, ours: int) -> int | None:
    """Connections on the vhost beyond the bench's own ``ours``: something else (another
    run of an older bench, a stray worker) consuming or purging what is measured."""
    found = await asyncio.to_thread(vhost_connections)
    if found is not None and found > ours:
        await asyncio.sleep(1.0)  # a child that just exited may still be closing
        found = await asyncio.to_thread(vhost_connections)
    extra = None if found is None else max(0, found - ours)
    if extra:
        ctx.log(
            f"WARNING {when}: {extra} other connection(s) on vhost {VHOST}: another process "
            "uses it, figures and even correctness of this run are suspect"
        )
    return extra


async def main(args: argparse.Namespace) -> int:
    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="herald-bench-"))
    database_url = args.database_url
    if database_url is None and args.db == "postgresql":
        database_url = POSTGRES_URL
    if database_url is not None and database_url.startswith("postgresql"):
        await ensure_postgres_database(database_url)
    cfg = BenchConfig(
        sizes=_sizes(args),
        database_url=database_url,
        workdir=workdir,
        profile=args.profile,
        # Quick is a smoke check with a 2-minute budget: one Celery pool is enough.
        celery_pools=["solo"] if args.quick else ["solo", "prefork"],
        log_level=args.log_level,
        c1_p50_today_ms=args.c1_p50_today,
    )
    selected = args.only or list(SCENARIOS)
    # Other work on the box skews every figure; the 1-minute load average before each
    # scenario goes into the report so a noisy run can be recognised as one.
    load: dict[str, Any] = {"before_run": os.getloadavg()[0]}
    seconds: dict[str, float] = {}
    rows: list[Row] = []
    failures: dict[str, str] = {}
    infra = await Infra.open()
    ctx = Context(cfg, infra)
    ctx.log(
        f"work dir {workdir}; vhost {VHOST}, Redis db {REDIS_DB}; scenarios: {', '.join(selected)}"
    )
    others: dict[str, int | None] = {}
    try:
        for name in selected:
            began = time.monotonic()
            load[name] = os.getloadavg()[0]
            others[name] = await _others_on_vhost(ctx, f"before {name}", ours=1)
            try:
                rows.extend(await SCENARIOS[name](ctx))
            except Exception as exc:  # noqa: BLE001 - report it, run the other scenarios
                failures[name] = f"{type(exc).__name__}: {exc}"
                ctx.log(f"scenario {name} FAILED: {failures[name]}")
            else:
                ctx.log(f"scenario {name} done in {time.monotonic() - began:.0f}s")
            seconds[name] = round(time.monotonic() - began, 1)
    finally:
        kill_all()
        await infra.close()
        if args.keep or failures:
            ctx.log(f"logs kept in {workdir / 'logs'}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    meta = {
        **_meta(args, cfg, started, load),
        "scenario_seconds": seconds,
        "vhost": VHOST,
        "redis_db": REDIS_DB,
        "other_vhost_connections": others,
    }
    details = {**ctx.details, "failures": failures}
    write_json(args.out, meta, rows, details)
    print()
    print(table(rows))
    print(
        f"\n{meta['mode']} run on {meta['database']}, HERALD_LOG_LEVEL={cfg.log_level}, "
        f"{meta['duration_s']:.0f}s; JSON: {args.out}"
    )
    cores = os.cpu_count() or 1
    if load["before_run"] > 0.25 * cores:
        print(
            f"NOTE: load average {load['before_run']:.2f} on {cores} CPUs before the run: "
            "other work was running, figures are noisy",
            file=sys.stderr,
        )
    if any(others.values()):
        print(
            f"WARNING: other connections on vhost {VHOST} during the run: {others}",
            file=sys.stderr,
        )
    for name, error in failures.items():
        print(f"FAILED {name}: {error}", file=sys.stderr)
    return 1 if failures else 0


def _exit_on_signal(signum: int, _frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so ``finally`` blocks and ``atexit`` stop children."""
    raise SystemExit(128 + signum)


def run() -> None:
    # The benchmark sets every HERALD_* its processes see; a developer's own must not leak
    # into the settings this process builds either.
    for key in [k for k in os.environ if k.startswith("HERALD_")]:
        del os.environ[key]
    signal.signal(signal.SIGTERM, _exit_on_signal)
    args = parse_args()
    lock = _lock_or_exit()
    try:
        code = asyncio.run(main(args))
    finally:
        kill_all()
        lock.close()
    sys.exit(code)


if __name__ == "__main__":
    run()
