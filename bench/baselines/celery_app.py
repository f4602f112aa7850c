"""Scenario 2b baseline: a Celery 5 worker draining no-op tasks from the same broker.

Configured to match Herald's delivery guarantees rather than Celery's fastest defaults:
a durable quorum queue, persistent messages, late acks (ack after the task ran), no
result backend. Each task does one Redis ``INCR`` so the orchestrator can see progress
without a result backend. Settings from ``BENCH_AMQP_URL`` / ``BENCH_REDIS_URL``;
``BENCH_CELERY_PREFETCH`` is the prefetch multiplier.

``python -m bench.baselines.celery_app enqueue N`` purges the queue and queues N tasks.
"""

from __future__ import annotations

import os
import sys

from celery import Celery
from redis import Redis

QUEUE = "bench.celery"
COUNTER = "bench:celery:done"

app = Celery(
    "bench",
    broker=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/herald_bench"),
)
app.conf.update(
    task_default_queue=QUEUE,
    task_default_queue_type="quorum",
    task_acks_late=True,
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=int(os.environ.get("BENCH_CELERY_PREFETCH", "16")),
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

_redis: Redis | None = None


def redis() -> Redis:
    """One client per process, made lazily so prefork children never share a socket."""
    global _redis
    if _redis is None:
        _redis = Redis.from_url(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"))
    return _redis


@app.task(name="bench.noop")
def noop(i: int) -> None:
    redis().incr(COUNTER)


def enqueue(count: int) -> None:
    app.control.purge()
    redis().delete(COUNTER)
    with app.producer_or_acquire() as producer:
        for i in range(count):
            noop.apply_async((i,), producer=producer)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "enqueue":
        enqueue(int(sys.argv[2]))
    else:
        sys.exit("usage: python -m bench.baselines.celery_app enqueue N")
