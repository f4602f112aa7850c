"""Subprocess helpers: every server, worker and load generator runs as its own process.

Real processes, not in-process apps, so a measurement includes what production pays
(its own interpreter, event loop and GIL) and the load generator never shares a CPU
slice with the server under test. Each child gets its own session (process group) so a
Celery prefork pool dies with its parent; every child is registered and killed on exit,
whatever path the orchestrator leaves by.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.config import AMQP_URL, API_KEY, DEFAULT_LOG_LEVEL, REDIS_URL, ROOT, VENV_BIN

_LIVE: dict[int, Proc] = {}


class ProcessFailed(RuntimeError):
    """A child exited early or did not become ready; the message carries its log tail."""


class Proc:
    """One child process with its log file; ``stop`` is bounded and always ends it."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log_path
        self.spawned_at = time.time()
        #: A worker's /metrics, one per process (``--processes N``); empty for others.
        self.metrics_urls: list[str] = []
        _LIVE[popen.pid] = self

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def rss_kib(self) -> int | None:
        """Resident set size from ``/proc/PID/status`` (VmRSS), or None once it is gone."""
        return rss_kib(self.pid)

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by this process and its children (its group)."""
        return group_cpu_seconds(self.pid)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if not self.alive():
            raise ProcessFailed(
                f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}"
            )

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)

    def _wait_blocking(self, limit_s: float) -> int | None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.popen.wait(limit_s)
        return None

    async def wait(self, limit_s: float) -> int | None:
        """The exit code, or None if still running after ``limit_s`` seconds."""
        return await asyncio.to_thread(self._wait_blocking, limit_s)

    async def stop(self, limit_s: float = 15.0) -> int | None:
        """SIGTERM the process group, then SIGKILL it if it outlives ``limit_s``."""
        self._signal_group(signal.SIGTERM)
        code = await self.wait(limit_s)
        if code is None:
            self.kill()
            code = await self.wait(5)
        _LIVE.pop(self.pid, None)
        return code

    async def interrupt(self, limit_s: float = 30.0) -> int | None:
        """SIGINT (a tool such as py-spy writes its output on it), then ``stop``."""
        self._signal_group(signal.SIGINT)
        if await self.wait(limit_s) is None:
            return await self.stop(5)
        _LIVE.pop(self.pid, None)
        return self.popen.returncode

    def kill(self) -> None:
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        _LIVE.pop(self.pid, None)


def kill_all() -> None:
    """Last-resort clean-up (atexit and signal handlers): no child outlives the run."""
    for proc in list(_LIVE.values()):
        proc.kill()


atexit.register(kill_all)


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: the kernel SIGKILLs it if the orchestrator dies first,
    even by SIGKILL, when no ``finally`` or ``atexit`` gets to run."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(name: str, argv: Sequence[str], *, env: Mapping[str, str], log_dir: Path) -> Proc:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    return Proc(name, popen, log_path)


@contextlib.asynccontextmanager
async def running(proc: Proc, *, stop_limit_s: float = 15.0) -> AsyncIterator[Proc]:
    """Stop ``proc`` when the block ends, however it ends."""
    try:
        yield proc
    finally:
        await proc.stop(stop_limit_s)


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of every live process in a process group (``/proc``).

    Tells CPU-bound from waiting; the group sum counts a Celery prefork pool's children.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_path.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env() -> dict[str, str]:
    """This environment without any ``HERALD_*``: the benchmark sets every one it needs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env["PYTHONPATH"] = str(ROOT)
    env["BENCH_AMQP_URL"] = AMQP_URL
    env["BENCH_REDIS_URL"] = REDIS_URL
    env["BENCH_API_KEY"] = API_KEY
    return env


#: Rate limits far above any load the bench offers: the limit checks still run (their cost
#: is part of the accept path) but never refuse; the bench sends thousands of messages to
#: one number, which the default per-recipient limit would rightly stop.
UNLIMITED = {"rate": 1_000_000_000, "period_s": 1}
LIMIT_SETTINGS = (
    "limit_api_key",
    "limit_recipient",
    "limit_otp_country",
    "limit_otp_prefix",
    "limit_sms_country",
    "limit_sms_prefix",
)


def free_ports(count: int, attempts: int = 50) -> int:
    """The first of ``count`` consecutive free ports (``worker --processes N`` serves its
    children's metrics on METRICS_PORT + i)."""
    for _ in range(attempts):
        first = free_port()
        with contextlib.ExitStack() as stack:
            try:
                for offset in range(1, count):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", first + offset))
            except (OSError, OverflowError):  # taken, or past port 65535
                continue
        return first
    raise RuntimeError(f"no {count} consecutive free ports")


def herald_values(
    database_url: str,
    api_port: int,
    *,
    log_level: str = DEFAULT_LOG_LEVEL,
    metrics_port: int | None = None,
) -> dict[str, Any]:
    """Settings for every Herald process of a scenario (defaults otherwise, as deployed).

    Settings a given Herald version does not know are ignored by it (``extra="ignore"``).
    ``metrics_port``: where a worker serves /metrics; given explicitly to every bench
    worker, since the default 9100 may be taken by another worker on the box (a taken
    port is only logged, and the bench would scrape someone else's metrics).
    """
    extra = {} if metrics_port is None else {"metrics_port": metrics_port}
    return {
        **extra,
        "database_url": database_url,
        "amqp_url": AMQP_URL,
        "redis_url": REDIS_URL,
        "api_port": api_port,
        "bootstrap_api_key": API_KEY,
        "log_level": log_level,
        "sandbox_enabled": True,
        "otp_secret": "bench-otp-secret-0123456789abcdef0123456789",
        "console_secret": "bench-console-secret-0123456789abcdef01234",
        **dict.fromkeys(LIMIT_SETTINGS, UNLIMITED),
    }


def herald_env(values: Mapping[str, Any]) -> dict[str, str]:
    env = base_env()
    for key, value in values.items():
        env[f"HERALD_{key.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


def herald(name: str, args: Sequence[str], values: Mapping[str, Any], log_dir: Path) -> Proc:
    return spawn(name, [str(VENV_BIN / "herald"), *args], env=herald_env(values), log_dir=log_dir)


def herald_with_lag(
    name: str, args: Sequence[str], values: Mapping[str, Any], log_dir: Path, lag_out: Path
) -> Proc:
    """``herald ARGS`` run in-process by ``bench.lagmon``, which samples the event loop's
    lag into ``lag_out`` (bench-only code; Herald itself is unchanged)."""
    argv = [str(VENV_BIN / "python"), "-m", "bench.lagmon", f"--out={lag_out}", "--", *args]
    return spawn(name, argv, env=herald_env(values), log_dir=log_dir)


async def herald_db_upgrade(values: Mapping[str, Any], log_dir: Path) -> None:
    proc = herald("db-upgrade", ["db", "upgrade"], values, log_dir)
    code = await proc.wait(120)
    if code != 0:
        proc.kill()
        raise ProcessFailed(f"herald db upgrade failed ({code}):\n{proc.log_tail()}")


def python_module(name: str, module: str, args: Sequence[str], log_dir: Path) -> Proc:
    return spawn(
        name, [str(VENV_BIN / "python"), "-m", module, *args], env=base_env(), log_dir=log_dir
    )


def bare_api(port: int, log_dir: Path) -> Proc:
    """The scenario-1 baseline, served by uvicorn with the same loop and parser as Herald."""
    argv = [
        str(VENV_BIN / "uvicorn"),
        "bench.baselines.bare_api:app",
        "--host=127.0.0.1",
        f"--port={port}",
        "--loop=uvloop",
        "--http=httptools",
        "--log-level=warning",
        "--no-access-log",
    ]
    return spawn("bare-api", argv, env=base_env(), log_dir=log_dir)


def celery_worker(pool: str, concurrency: int, log_dir: Path) -> Proc:
    argv = [
        str(VENV_BIN / "celery"),
        "-A",
        "bench.baselines.celery_app",
        "worker",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        "--loglevel=WARNING",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--queues=bench.celery",
    ]
    return spawn(f"celery-{pool}", argv, env=base_env(), log_dir=log_dir)


async def wait_http_ok(proc: Proc, url: str, limit_s: float = 30.0) -> None:
    """Poll ``url`` until it answers 200: uvicorn only serves once its lifespan started."""
    deadline = time.monotonic() + limit_s
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline:
            proc.check_alive()
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise ProcessFailed(f"{proc.name} not ready at {url} after {limit_s}s:\n{proc.log_tail()}")


async def run_load(
    name: str,
    *,
    url: str,
    body: Mapping[str, Any],
    log_dir: Path,
    mode: str = "closed",
    concurrency: int = 32,
    count: int | None = None,
    rate: float | None = None,
    warmup: float = 0.0,
    duration: float = 10.0,
    record: bool = False,
    auth: bool = True,
    max_refused: int | None = None,
) -> dict[str, Any]:
    """Run ``bench.load`` in its own process and return its JSON summary."""
    out = log_dir / f"{name}.json"
    out.unlink(missing_ok=True)
    args = [
        f"--url={url}",
        f"--body={json.dumps(body)}",
        f"--mode={mode}",
        f"--concurrency={concurrency}",
        f"--warmup={warmup}",
        f"--duration={duration}",
        f"--out={out}",
    ]
    if auth:
        args.append(f"--header=Authorization: Bearer {API_KEY}")
    if count is not None:
        args.append(f"--count={count}")
    if rate is not None:
        args.append(f"--rate={rate}")
    if record:
        args.append("--record")
    if max_refused is not None:
        args.append(f"--max-refused={max_refused}")
    proc = python_module(name, "bench.load", args, log_dir)
    try:
        code = await proc.wait(warmup + duration + 90)
    finally:
        await proc.stop(5)
    if code != 0 or not out.exists():
        raise ProcessFailed(f"load generator {name} failed ({code}):\n{proc.log_tail()}")
    summary: dict[str, Any] = json.loads(out.read_text())
    return summary
