"""The shared services as the benchmark sees them: vhost, queues, Redis db, database.

Everything here runs in the orchestrator and only observes or resets state; it never
does work a measured process should be doing.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractConnection
from redis.asyncio import Redis
from sqlalchemy import func, make_url, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from bench.config import AMQP_URL, REDIS_URL, VHOST
from bench.procs import herald_db_upgrade, herald_values
from config.settings import Settings
from herald import names
from herald.resources import topology_for
from herald.storage.models import Base, Notification, OutboxEntry

CELERY_QUEUE = "bench.celery"
N = Notification.__table__
OUTBOX = OutboxEntry.__table__


def ensure_vhost() -> None:
    """Create ``herald_bench`` (an existing one is fine) and let guest use it."""
    subprocess.run(
        ["rabbitmqctl", "-q", "add_vhost", VHOST], capture_output=True, check=False, timeout=60
    )
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*"],
        capture_output=True,
        check=True,
        timeout=60,
    )


async def ensure_postgres_database(url: str) -> None:
    """Create the database ``url`` names if it does not exist (``--db postgresql``)."""
    target = make_url(url)
    admin = create_async_engine(
        target.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool
    )
    try:
        async with admin.connect() as conn:
            found = await conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"),
                {"name": target.database},
            )
            if found.first() is None:
                await conn.execute(text(f'CREATE DATABASE "{target.database}"'))
    finally:
        await admin.dispose()


def vhost_connections() -> int | None:
    """AMQP connections open on the bench's vhost (None if rabbitmqctl cannot say)."""
    try:
        found = subprocess.run(
            ["rabbitmqctl", "-q", "list_connections", "vhost"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if found.returncode != 0:
        return None
    return sum(1 for line in found.stdout.splitlines() if line.strip() == VHOST)


def bench_settings() -> Settings:
    """Herald's defaults with the bench addresses: the topology the processes declare."""
    return Settings(database_url="sqlite://", amqp_url=AMQP_URL, redis_url=REDIS_URL)


def _copy_sqlite(source: Path, target: Path) -> bool:
    """Copy a SQLite database with its WAL files; False if there is none yet."""
    if not source.exists():
        return False
    for suffix in ("", "-wal", "-shm"):
        part = Path(f"{source}{suffix}")
        if part.exists():
            shutil.copyfile(part, f"{target}{suffix}")
    return True


class Infra:
    """One AMQP connection, one Redis client and a read-only database engine."""

    def __init__(self, amqp: AbstractConnection, redis: Redis) -> None:
        self.amqp = amqp
        self.redis = redis
        self.settings = bench_settings()
        self.db: AsyncEngine | None = None
        self.database_url: str | None = None

    @classmethod
    async def open(cls) -> Infra:
        ensure_vhost()
        amqp = await aio_pika.connect(AMQP_URL, client_properties={"connection_name": "bench"})
        return cls(amqp, Redis.from_url(REDIS_URL))

    async def close(self) -> None:
        if self.db is not None:
            await self.db.dispose()
        await self.redis.aclose()
        await self.amqp.close()

    # -- broker -----------------------------------------------------------------------

    def all_queues(self) -> list[str]:
        return [
            *names.all_work_queues(),
            names.DLQ,
            *(names.retry_queue(ms) for ms in self.settings.retry_buckets_ms),
            CELERY_QUEUE,
        ]

    async def reset(self, settle_s: float = 0.5, rounds: int = 10) -> None:
        """Empty every queue of the vhost and Redis db 14: each scenario starts clean.

        A quorum queue's purge removes only ready messages: those a consumer that just
        exited still held come back when the broker notices the closed channel, which can
        be after the purge (seen after a loaded chain: the next scenario's worker got the
        previous one's messages). So purge, wait ``settle_s``, and purge again until a
        round finds every queue empty and without consumers.
        """
        channel = await self.amqp.channel()
        try:
            await topology_for(self.settings).declare(channel)
            await channel.declare_queue(
                CELERY_QUEUE, durable=True, arguments={"x-queue-type": "quorum"}
            )
            for _ in range(rounds):
                leftover = 0
                for name in self.all_queues():
                    queue = await channel.declare_queue(name, passive=True)
                    result = queue.declaration_result
                    leftover += (result.message_count or 0) + (result.consumer_count or 0)
                    await queue.purge()
                if not leftover:
                    break
                await asyncio.sleep(settle_s)
        finally:
            await channel.close()
        await self.redis.flushdb()

    async def depth(self, *queue_names: str) -> int:
        """Ready messages in the named queues (default: every Herald work queue)."""
        channel = await self.amqp.channel()
        try:
            total = 0
            for name in queue_names or names.all_work_queues():
                queue = await channel.declare_queue(name, passive=True)
                total += queue.declaration_result.message_count or 0
            return total
        finally:
            await channel.close()

    async def consumers(self, queue_name: str) -> int:
        """Consumers attached to a queue: how the bench knows a worker is ready."""
        channel = await self.amqp.channel()
        try:
            queue = await channel.declare_queue(queue_name, passive=True)
            return queue.declaration_result.consumer_count or 0
        finally:
            await channel.close()

    async def publish_copies(self, routing_key: str, body: bytes, count: int) -> None:
        """``count`` persistent, confirmed copies of ``body`` on the ``herald`` exchange."""
        channel = await self.amqp.channel(publisher_confirms=True)
        try:
            exchange = await channel.get_exchange(names.EXCHANGE, ensure=False)
            for start in range(0, count, 500):
                await asyncio.gather(
                    *(
                        exchange.publish(
                            aio_pika.Message(
                                body,
                                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                message_id=uuid.uuid4().hex,
                                content_type="application/json",
                            ),
                            routing_key=routing_key,
                        )
                        for _ in range(min(500, count - start))
                    )
                )
        finally:
            await channel.close()

    # -- database ---------------------------------------------------------------------

    async def fresh_database(
        self, configured_url: str | None, workdir: Path, tag: str, log_level: str
    ) -> str:
        """A migrated, empty database for one scenario; SQLite gets a new file each time."""
        if self.db is not None:
            await self.db.dispose()
        if configured_url is None:
            # Migrate once, then copy: ``herald db upgrade`` costs a second per scenario.
            template, target = workdir / "template.db", workdir / f"{tag}.db"
            if not _copy_sqlite(template, target):
                url = f"sqlite+aiosqlite:///{template}"
                await herald_db_upgrade(
                    herald_values(url, 0, log_level=log_level), workdir / "logs"
                )
                _copy_sqlite(template, target)
            url = f"sqlite+aiosqlite:///{target}"
        else:
            url = configured_url
            await herald_db_upgrade(herald_values(url, 0, log_level=log_level), workdir / "logs")
        # A plain engine on purpose: Herald's SQLite tuning opens every transaction with
        # BEGIN IMMEDIATE, and a poller must not take the write lock from the worker.
        self.db = create_async_engine(url)
        self.database_url = url
        if configured_url is not None:
            tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
            async with self.db.begin() as conn:
                await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        return url

    async def _scalar(self, statement: Any) -> int:
        assert self.db is not None, "fresh_database() first"
        async with self.db.connect() as conn:
            return int((await conn.execute(statement)).scalar_one())

    async def count_status(self, status: str, category: str | None = None) -> int:
        statement = select(func.count()).select_from(N).where(N.c.status == status)
        if category is not None:
            statement = statement.where(N.c.category == category)
        return await self._scalar(statement)

    async def count_notifications(self) -> int:
        return await self._scalar(select(func.count()).select_from(N))

    async def count_outbox(self) -> int:
        return await self._scalar(select(func.count()).select_from(OUTBOX))
