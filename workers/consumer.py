"""The consumer: one channel and one delivery lane per queue, acks applied in one place.

``high`` queues have their own channels, prefetch and lanes, so OTPs never wait behind a
marketing backlog. Each lane batches what is already waiting (``workers/lanes.py``).
SIGTERM stops consuming, lets the messages in hand finish, exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from functools import partial

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection

from herald.domain import Priority
from herald.logs import get_logger
from herald.readiness import NotConsuming, ensure_consuming
from workers.delivery import Delivery, Disposition
from workers.lanes import Lane

log = get_logger(__name__)
#: How long a consumer cancel may wait at shutdown (a cut link never answers).
CANCEL_WAIT_S = 2.0


async def apply_disposition(message: AbstractIncomingMessage, disposition: Disposition) -> None:
    """The only place where a work message is acked or put back."""
    if disposition is Disposition.ACK:
        await message.ack()
    else:
        await message.nack(requeue=True)


class Consumer:
    def __init__(
        self,
        connection: AbstractRobustConnection,
        delivery: Delivery,
        *,
        queues: Iterable[str],
        prefetch: int,
        high_prefetch: int,
        batch_max: int = 64,
    ) -> None:
        self.connection = connection
        self.delivery = delivery
        self.queue_names = list(queues)
        self.prefetch = prefetch
        self.high_prefetch = high_prefetch
        self.batch_max = batch_max
        self._consuming: list[tuple[AbstractQueue, str]] = []
        self._lanes: dict[str, Lane] = {}

    async def start(self) -> None:
        for queue_name in self.queue_names:
            high = queue_name.endswith(f".{Priority.HIGH}")
            channel = await self.connection.channel()
            await channel.set_qos(prefetch_count=self.high_prefetch if high else self.prefetch)
            lane = Lane(self.delivery, apply_disposition, batch_max=self.batch_max, urgent=high)
            lane.start()
            self._lanes[queue_name] = lane
            # A declared (passive) queue is registered on the robust channel, so its consumer
            # is restored after a reconnect; get_queue(ensure=False) is not (aio-pika 10).
            queue = await channel.declare_queue(queue_name, passive=True)
            tag = await queue.consume(partial(self._on_message, queue_name), no_ack=False)
            self._consuming.append((queue, tag))
        log.info("worker_consuming", queues=self.queue_names)

    async def ensure_consuming(self) -> None:
        """Readiness: raise unless every queue this worker started on still has its consumer."""
        if not self._consuming:
            raise NotConsuming("not consuming (starting or stopping)")
        await ensure_consuming(self._consuming)

    async def _on_message(self, queue_name: str, message: AbstractIncomingMessage) -> None:
        """Hand the message to its queue's lane; the lane acks it once it is handled."""
        self._lanes[queue_name].put(message, queue_name)

    async def stop(self, grace_s: float) -> None:
        """Stop taking messages, then wait (bounded) for the ones in hand."""
        # Together and bounded: with the broker link cut, a cancel waits for the reconnect
        # (the robust queue forgets the consumer first, so it is not restored either way).
        await asyncio.gather(*(_cancel(queue, tag) for queue, tag in self._consuming))
        self._consuming.clear()
        lanes = list(self._lanes.values())
        try:
            await asyncio.wait_for(
                asyncio.gather(*(lane.idle.wait() for lane in lanes)), timeout=grace_s
            )
        except TimeoutError:
            log.warning("shutdown_grace_exceeded", in_flight=sum(lane.in_hand for lane in lanes))
        for lane in lanes:
            await lane.close()
        self._lanes.clear()


async def _cancel(queue: AbstractQueue, tag: str) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(queue.cancel(tag), timeout=CANCEL_WAIT_S)
