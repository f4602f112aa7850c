"""Process entry points: ``herald dev`` (everything), ``herald api``, ``herald worker``.

Each installs its own SIGTERM/SIGINT handling: stop taking work, finish what is in
hand, close connections, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import socket
from collections.abc import Generator, Iterable
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from config.settings import Settings
from dlq.ingester import DeadLetterIngester
from herald import names
from herald.errors import StartupRefused
from herald.logs import get_logger
from herald.monitor import QueueDepthMonitor
from herald.readiness import Check
from herald.resources import Resources
from herald.storage.probe import probe_write, process_name
from producer.app import create_app
from providers.sandbox import warn_if_sandbox_routed
from workers.probes import probe_app
from workers.runtime import Worker, build_worker

log = get_logger(__name__)

#: The exit status of a process refused for its settings (sysexits' EX_CONFIG).
EX_CONFIG = 78


def refuse_insecure_start(settings: Settings, *, serves_api: bool = True) -> None:
    """Outside ``herald dev``, refuse default or short secrets before anything starts."""
    problems = settings.insecure_secrets(serves_api=serves_api)
    if problems:
        raise StartupRefused("herald: refusing to start: " + "; ".join(problems))


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the process-level handler decides."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _api_server(
    settings: Settings, *, run_relay: bool = True, app: FastAPI | None = None
) -> _QuietServer:
    config = uvicorn.Config(
        app or create_app(settings, run_relay=run_relay),
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        lifespan="on",
        # Forwarded headers are believed only from HERALD_TRUSTED_PROXIES, by our own code
        # (producer/forwarded.py); uvicorn's would trust any local client.
        proxy_headers=False,
    )
    return _QuietServer(config)


async def run_api(settings: Settings, *, reuse_port: bool = False) -> None:
    """``reuse_port``: one of several processes on the same port (``--workers N``); the
    kernel spreads connections across them."""
    refuse_insecure_start(settings)
    stop = _stop_event()
    server = _api_server(settings)
    sockets = [_listen(settings.api_host, settings.api_port)] if reuse_port else None
    serving = asyncio.create_task(server.serve(sockets=sockets))
    await _wait_either(stop, serving)
    server.should_exit = True
    await serving


@dataclass(slots=True)
class WorkerParts:
    """Everything a worker process runs: consumers, dead-letter ingester, queue monitor."""

    worker: Worker
    ingester: DeadLetterIngester | None
    monitor: QueueDepthMonitor

    @classmethod
    async def start(cls, resources: Resources, queues: list[str], *, ingest: bool) -> WorkerParts:
        assert resources.amqp is not None
        worker = await build_worker(resources, queues)
        ingester = DeadLetterIngester(resources.amqp, resources.sessions) if ingest else None
        monitor = QueueDepthMonitor(resources.amqp)
        await worker.start()
        if ingester is not None:
            await ingester.start()
        monitor.start()
        return cls(worker, ingester, monitor)

    def readiness_checks(self, resources: Resources) -> dict[str, Check]:
        """What this worker needs to do its job; ``/readyz`` fails while any check fails."""
        assert resources.amqp is not None
        amqp = resources.amqp

        async def broker() -> None:
            if amqp.is_closed or not amqp.connected.is_set():
                raise ConnectionError("RabbitMQ connection is down")

        async def database() -> None:
            await probe_write(resources.engine, process_name("worker"))

        async def redis() -> None:
            await resources.redis.ping()

        checks: dict[str, Check] = {
            "broker": broker,
            "consumers": self.worker.consumer.ensure_consuming,
            "database": database,
            "redis": redis,
        }
        if self.ingester is not None:
            checks["dead_letter_ingester"] = self.ingester.ensure_consuming
        return checks

    async def stop(self, grace_s: float) -> None:
        await self.monitor.stop()
        await self.worker.stop(grace_s)
        if self.ingester is not None:
            await self.ingester.stop()


async def run_worker(
    settings: Settings, queues: Iterable[str] | None, *, ingest: bool = True
) -> None:
    refuse_insecure_start(settings, serves_api=False)
    stop = _stop_event()
    resources = await Resources.open(settings, name="herald-worker")
    parts = await WorkerParts.start(
        resources, list(queues or names.all_work_queues()), ingest=ingest
    )
    probes = _probe_server(settings, parts.readiness_checks(resources))
    # Start-up objects (SDKs, models, the app) never die: keep them out of every
    # collection, so full GC passes stay short and the loop stays responsive.
    gc.freeze()
    warn_if_sandbox_routed(parts.worker.rules.current(), settings)
    log.info("worker_started")
    await stop.wait()
    log.info("worker_stopping")
    await parts.stop(settings.shutdown_grace_s)
    if probes is not None:
        await probes.stop()
    await resources.close()
    log.info("worker_stopped")


async def run_dev(settings: Settings) -> None:
    """API, workers, outbox relay and dead-letter ingester in one process."""
    stop = _stop_event()
    resources = await Resources.open(settings, name="herald-dev-worker")
    parts = await WorkerParts.start(resources, names.all_work_queues(), ingest=True)
    app = create_app(settings)
    # One process: its /readyz also fails when the workers' consumers are gone.
    checks = parts.readiness_checks(resources)
    app.state.extra_readiness_checks = {
        name: check for name, check in checks.items() if name in _CONSUMER_CHECKS
    }
    server = _api_server(settings, app=app)
    serving = asyncio.create_task(server.serve())
    log.info("herald_dev_started", url=f"http://{settings.api_host}:{settings.api_port}")
    await _wait_either(stop, serving)
    server.should_exit = True
    await serving
    await parts.stop(settings.shutdown_grace_s)
    await resources.close()


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


_CONSUMER_CHECKS = ("consumers", "dead_letter_ingester")


class _ProbeServer:
    """The worker's /healthz, /readyz and /metrics, served by uvicorn in this loop."""

    def __init__(self, server: _QuietServer, sock: socket.socket) -> None:
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[sock]))

    async def stop(self) -> None:
        self._server.should_exit = True
        await self._task


def _probe_server(settings: Settings, checks: dict[str, Check]) -> _ProbeServer | None:
    """Serve the probes on METRICS_PORT; a taken port is logged, not fatal."""
    if not settings.metrics_port:
        return None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.api_host, settings.metrics_port))
    except OSError as exc:
        sock.close()
        log.warning("metrics_port_unavailable", port=settings.metrics_port, error=str(exc))
        return None
    config = uvicorn.Config(
        probe_app(checks), log_level="warning", access_log=False, lifespan="off"
    )
    return _ProbeServer(_QuietServer(config), sock)


async def _wait_either(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
