"""Process entry points: ``herald dev`` (everything), ``herald api``, ``herald worker``.

Each installs its own SIGTERM/SIGINT handling: stop taking work, finish what is in
hand, close connections, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Generator, Iterable

import uvicorn
from prometheus_client import start_http_server

from config.settings import Settings
from dlq.ingester import DeadLetterIngester
from herald import names
from herald.logs import get_logger
from herald.monitor import QueueDepthMonitor
from herald.resources import Resources
from producer.app import create_app
from workers.runtime import build_consumer

log = get_logger(__name__)


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


def _api_server(settings: Settings, *, run_relay: bool = True) -> _QuietServer:
    config = uvicorn.Config(
        create_app(settings, run_relay=run_relay),
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        lifespan="on",
    )
    return _QuietServer(config)


async def run_api(settings: Settings) -> None:
    stop = _stop_event()
    server = _api_server(settings)
    serving = asyncio.create_task(server.serve())
    await _wait_either(stop, serving)
    server.should_exit = True
    await serving


async def run_worker(
    settings: Settings, queues: Iterable[str] | None, *, ingest: bool = True
) -> None:
    stop = _stop_event()
    if settings.metrics_port:
        try:
            start_http_server(settings.metrics_port, addr=settings.api_host)
        except OSError as exc:
            log.warning("metrics_port_unavailable", port=settings.metrics_port, error=str(exc))
    resources = await Resources.open(settings, name="herald-worker")
    consumer, providers = await build_consumer(resources, list(queues or names.all_work_queues()))
    ingester = DeadLetterIngester(resources.amqp, resources.sessions) if ingest else None  # type: ignore[arg-type]
    monitor = QueueDepthMonitor(resources.amqp)  # type: ignore[arg-type]
    await consumer.start()
    if ingester is not None:
        await ingester.start()
    monitor.start()
    log.info("worker_started")
    await stop.wait()
    log.info("worker_stopping")
    await monitor.stop()
    await consumer.stop(settings.shutdown_grace_s)
    if ingester is not None:
        await ingester.stop()
    for provider in providers.values():
        await provider.close()
    await resources.close()
    log.info("worker_stopped")


async def run_dev(settings: Settings) -> None:
    """API, workers, outbox relay and dead-letter ingester in one process."""
    stop = _stop_event()
    resources = await Resources.open(settings, name="herald-dev-worker")
    consumer, providers = await build_consumer(resources, names.all_work_queues())
    assert resources.amqp is not None
    ingester = DeadLetterIngester(resources.amqp, resources.sessions)
    server = _api_server(settings)
    serving = asyncio.create_task(server.serve())
    monitor = QueueDepthMonitor(resources.amqp)
    await consumer.start()
    await ingester.start()
    monitor.start()
    log.info("herald_dev_started", url=f"http://{settings.api_host}:{settings.api_port}")
    await _wait_either(stop, serving)
    server.should_exit = True
    await serving
    await monitor.stop()
    await consumer.stop(settings.shutdown_grace_s)
    await ingester.stop()
    for provider in providers.values():
        await provider.close()
    await resources.close()


async def _wait_either(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
