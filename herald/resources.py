"""Connections made once per process at start-up and passed in (no hidden global clients)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from aio_pika.abc import AbstractRobustConnection
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from config.settings import Settings
from herald.broker import Publisher, Topology, connect
from herald.storage.db import SessionFactory, make_engines, make_session_factory


def topology_for(settings: Settings) -> Topology:
    return Topology(
        delivery_limit=settings.queue_delivery_limit, retry_buckets_ms=settings.retry_buckets_ms
    )


def make_redis(settings: Settings) -> Redis:
    return Redis.from_url(
        settings.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0, health_check_interval=10
    )


@dataclass(slots=True)
class Resources:
    settings: Settings
    engine: AsyncEngine
    sessions: SessionFactory
    redis: Redis
    amqp: AbstractRobustConnection | None
    publisher: Publisher | None
    #: Read-only work (status reads, console pages): on SQLite a pool of query-only
    #: connections that never wait for the write lock; elsewhere the same engine.
    reader: AsyncEngine
    readers: SessionFactory

    @classmethod
    async def open(cls, settings: Settings, *, name: str, broker: bool = True) -> Resources:
        engines = make_engines(
            settings.database_url,
            wait_s=settings.database_wait_s,
            synchronous=settings.sqlite_synchronous,
        )
        engine = engines.writer
        redis = make_redis(settings)
        amqp = publisher = None
        if broker:
            amqp = await connect(settings.amqp_url, name=name)
            channel = await amqp.channel()
            await topology_for(settings).declare(channel)
            await channel.close()
            publisher = Publisher(amqp)
        sessions, readers = make_session_factory(engine), make_session_factory(engines.reader)
        return cls(settings, engine, sessions, redis, amqp, publisher, engines.reader, readers)

    async def close(self) -> None:
        if self.publisher is not None:
            with contextlib.suppress(Exception):
                await self.publisher.close()
        if self.amqp is not None:
            with contextlib.suppress(Exception):
                await self.amqp.close()
        await self.redis.aclose()
        await self.engine.dispose()
        if self.reader is not self.engine:
            await self.reader.dispose()
