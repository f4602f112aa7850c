"""What every scenario needs: a clean slate, Herald processes, pre-loaded backlogs."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config import BenchConfig
from bench.infra import Infra
from bench.measure import wait_for
from bench.procs import (
    Proc,
    bare_api,
    free_port,
    free_ports,
    herald,
    herald_values,
    herald_with_lag,
    run_load,
    wait_http_ok,
)

NOTIFICATIONS = "/v1/notifications"


@dataclass(frozen=True, slots=True)
class Server:
    proc: Proc
    url: str  # base URL, no trailing slash


@dataclass(slots=True)
class Context:
    cfg: BenchConfig
    infra: Infra
    details: dict[str, Any] = field(default_factory=dict)
    database_url: str = ""

    @property
    def log_dir(self) -> Path:
        return self.cfg.workdir / "logs"

    def log(self, message: str) -> None:
        """Progress on stderr, so a long full run shows where it is."""
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)

    async def prepare(self, tag: str) -> None:
        """Empty queues and Redis db 14, and a freshly migrated database."""
        await self.infra.reset()
        self.database_url = await self.infra.fresh_database(
            self.cfg.database_url, self.cfg.workdir, tag, self.cfg.log_level
        )

    def herald_values(self, port: int = 0, metrics_port: int | None = None) -> dict[str, Any]:
        return herald_values(
            self.database_url, port, log_level=self.cfg.log_level, metrics_port=metrics_port
        )

    @contextlib.asynccontextmanager
    async def herald_api(self, tag: str) -> AsyncIterator[Server]:
        port = free_port()
        proc = herald(f"{tag}-herald-api", ["api"], self.herald_values(port), self.log_dir)
        try:
            url = f"http://127.0.0.1:{port}"
            await wait_http_ok(proc, f"{url}/healthz")
            yield Server(proc, url)
        finally:
            await proc.stop()

    @contextlib.asynccontextmanager
    async def herald_worker(
        self, tag: str, *, processes: int = 1, lag_out: Path | None = None
    ) -> AsyncIterator[Proc]:
        """``herald worker`` (``--processes N`` when N > 1), each process serving /metrics
        on a port of its own; ``lag_out``: sample its event-loop lag (one process only)."""
        port = free_ports(processes)
        values = self.herald_values(metrics_port=port)
        name = f"{tag}-herald-worker"
        if lag_out is not None:
            if processes != 1:
                raise ValueError("event-loop lag is sampled in a single worker process")
            proc = herald_with_lag(name, ["worker"], values, self.log_dir, lag_out)
        else:
            args = ["worker"] if processes == 1 else ["worker", f"--processes={processes}"]
            proc = herald(name, args, values, self.log_dir)
        proc.metrics_urls = [f"http://127.0.0.1:{port + i}/metrics" for i in range(processes)]
        try:
            yield proc
        finally:
            await proc.stop(30)

    @contextlib.asynccontextmanager
    async def bare_api(self) -> AsyncIterator[Server]:
        port = free_port()
        proc = bare_api(port, self.log_dir)
        try:
            url = f"http://127.0.0.1:{port}"
            await wait_http_ok(proc, f"{url}/healthz")
            yield Server(proc, url)
        finally:
            await proc.stop()

    async def load(self, name: str, **kwargs: Any) -> dict[str, Any]:
        """Run the load generator; say so when the server refused part of the load, since
        a figure made of 4xx/5xx answers measures something else than the issue asks."""
        summary = await run_load(name, log_dir=self.log_dir, **kwargs)
        refused = {k: v for k, v in summary["statuses"].items() if not k.startswith("2")}
        if refused or summary["errors"]:
            self.log(f"WARNING {name}: refused {refused}, errors {summary['errors']}")
        return summary

    async def preload(
        self, api: Server, body: Mapping[str, Any], count: int, tag: str
    ) -> dict[str, Any]:
        """Queue ``count`` notifications through the API (no worker running) and wait
        until the outbox is empty, i.e. every one of them is confirmed on the broker."""
        started = time.monotonic()
        load = await self.load(
            f"{tag}-preload",
            url=api.url + NOTIFICATIONS,
            body=body,
            count=count,
            duration=count / 20 + 60,  # an upper bound: at least 20 accepts/s
            max_refused=count // 10 + 100,
        )
        if load["ok"] < count:
            raise RuntimeError(f"pre-load accepted {load['ok']} of {count}: {load}")
        await wait_for(
            self.infra.count_outbox,
            lambda n: n == 0,
            limit_s=max(120.0, count / 50),
            interval=0.5,
            what="outbox backlog",
        )
        api.proc.check_alive()
        depth = await self.infra.depth()
        return {
            "count": count,
            "accepted_per_s": load["ok_per_s"],
            "seconds_until_outbox_empty": time.monotonic() - started,
            "queue_depth": depth,
            "http_statuses": load["statuses"],
            "http_errors": load["errors"],
        }
