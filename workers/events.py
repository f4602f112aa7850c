"""Outcome events on ``herald.events`` (pub-sub): ``<event>.<channel>`` routing keys.

Events are best effort: published without confirms so they never slow a delivery; the
database is the record of truth.
"""

from __future__ import annotations

from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection

from herald import names
from herald.broker import BROKER_ERRORS
from herald.domain import Envelope, utcnow
from herald.logs import get_logger

log = get_logger(__name__)


class EventPublisher:
    def __init__(self, connection: AbstractRobustConnection) -> None:
        self._connection = connection
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None

    async def _get_exchange(self) -> AbstractExchange:
        if self._exchange is None or self._channel is None or self._channel.is_closed:
            self._channel = await self._connection.channel(publisher_confirms=False)
            self._exchange = await self._channel.get_exchange(names.EVENTS_EXCHANGE, ensure=False)
        return self._exchange

    async def publish(self, event: str, message: Envelope, **fields: Any) -> None:
        body = orjson.dumps(
            {
                "event": event,
                "id": message.id,
                "channel": message.channel.value,
                "category": message.category.value,
                "at": utcnow().isoformat(),
                **fields,
            }
        )
        try:
            exchange = await self._get_exchange()
            await exchange.publish(
                aio_pika.Message(body, content_type="application/json"),
                routing_key=f"{event}.{message.channel.value}",
                mandatory=False,
            )
        except BROKER_ERRORS as exc:
            log.warning(
                "event_not_published", kind=event, notification_id=message.id, error=str(exc)
            )
