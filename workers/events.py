"""Outcome events on ``herald.events`` (pub-sub): ``<event>.<channel>`` routing keys.

Events are best effort: published without confirms so they never slow a delivery; the
database is the record of truth.
"""

from __future__ import annotations

from typing import Any

import orjson
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from pamqp.commands import Basic

from herald import names
from herald.broker import BROKER_ERRORS
from herald.domain import Envelope, utcnow
from herald.logs import get_logger

log = get_logger(__name__)
EVENT_PROPERTIES = Basic.Properties(content_type="application/json")


class EventPublisher:
    def __init__(self, connection: AbstractRobustConnection) -> None:
        self._connection = connection
        self._channel: AbstractChannel | None = None

    async def _get_channel(self) -> AbstractChannel:
        if self._channel is None or self._channel.is_closed:
            self._channel = await self._connection.channel(publisher_confirms=False)
        return self._channel

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
            # Straight to aiormq: an aio-pika Message per event cost more than the event.
            channel = await (await self._get_channel()).get_underlay_channel()
            await channel.basic_publish(
                body,
                exchange=names.EVENTS_EXCHANGE,
                routing_key=f"{event}.{message.channel.value}",
                properties=EVENT_PROPERTIES,
            )
        except BROKER_ERRORS as exc:
            log.warning(
                "event_not_published", kind=event, notification_id=message.id, error=str(exc)
            )
