"""RabbitMQ: connection, the one topology declarer (DESIGN §5) and the confirming publisher."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractRobustConnection,
    ExchangeType,
)

from herald import names

log = logging.getLogger(__name__)

#: Errors that mean "the broker link is gone or refused": publish later.
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    aio_pika.exceptions.AMQPError,
    aiormq.exceptions.AMQPError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
    RuntimeError,  # aiormq raises it for a closed connection or channel
)


async def connect(url: str, *, name: str = "herald") -> AbstractRobustConnection:
    return await aio_pika.connect_robust(url, client_properties={"connection_name": name})


class Topology:
    """Declares every exchange and queue of DESIGN §5, once, at start-up."""

    def __init__(self, *, delivery_limit: int, retry_buckets_ms: list[int]) -> None:
        self.delivery_limit = delivery_limit
        self.retry_buckets_ms = sorted(set(retry_buckets_ms))

    def work_queue_arguments(self) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": names.DLX,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    async def declare(self, channel: AbstractChannel) -> None:
        herald = await channel.declare_exchange(names.EXCHANGE, ExchangeType.TOPIC, durable=True)
        dlx = await channel.declare_exchange(names.DLX, ExchangeType.FANOUT, durable=True)
        retry = await channel.declare_exchange(
            names.RETRY_EXCHANGE, ExchangeType.HEADERS, durable=True
        )
        await channel.declare_exchange(names.EVENTS_EXCHANGE, ExchangeType.TOPIC, durable=True)

        for queue_name in names.all_work_queues():
            queue = await channel.declare_queue(
                queue_name, durable=True, arguments=self.work_queue_arguments()
            )
            _, channel_name, priority = queue_name.split(".")
            await queue.bind(herald, routing_key=f"{channel_name}.{priority}")

        dlq = await channel.declare_queue(
            names.DLQ, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dlq.bind(dlx)

        # A retry keeps its original routing key, so when its TTL ends it dead-letters
        # back into "herald" and lands on the queue it came from.
        for delay_ms in self.retry_buckets_ms:
            queue = await channel.declare_queue(
                names.retry_queue(delay_ms),
                durable=True,
                arguments={
                    "x-queue-type": "quorum",
                    "x-message-ttl": delay_ms,
                    "x-dead-letter-exchange": names.EXCHANGE,
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                },
            )
            await queue.bind(
                retry, arguments={"x-match": "all", names.HEADER_RETRY_BUCKET: delay_ms}
            )


class Publisher:
    """Publishes persistent, mandatory messages and waits for the broker's confirm."""

    def __init__(self, connection: AbstractRobustConnection, *, timeout: float = 5.0) -> None:
        self._connection = connection
        self._timeout = timeout
        self._channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._lock = asyncio.Lock()

    async def _exchange(self, name: str) -> AbstractExchange:
        if self._channel is None or self._channel.is_closed:
            async with self._lock:
                if self._channel is None or self._channel.is_closed:
                    self._channel = await self._connection.channel(
                        publisher_confirms=True, on_return_raises=True
                    )
                    self._exchanges.clear()
        if name not in self._exchanges:
            assert self._channel is not None
            self._exchanges[name] = await self._channel.get_exchange(name, ensure=False)
        return self._exchanges[name]

    @property
    def connected(self) -> bool:
        return self._connection.connected.is_set() and not self._connection.is_closed

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        notification_id: str,
        headers: Mapping[str, Any] | None = None,
        priority: int | None = None,
        mandatory: bool = True,
    ) -> None:
        """Return once RabbitMQ has confirmed the message; raise a ``BROKER_ERRORS`` member."""
        if not self.connected:
            raise ConnectionError("RabbitMQ connection is down")
        message = aio_pika.Message(
            body,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=uuid.uuid4().hex,
            content_type="application/json",
            headers={names.HEADER_NOTIFICATION_ID: notification_id, **(headers or {})},
            priority=priority,
        )
        target = await self._exchange(exchange)
        await target.publish(
            message, routing_key=routing_key, mandatory=mandatory, timeout=self._timeout
        )

    async def close(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()
