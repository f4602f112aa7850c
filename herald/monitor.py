"""Samples queue depths into the ``herald_queue_depth`` gauge (the broker has no
management plugin here, so a passive declare reads each queue's ready count)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import cast

from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection

from herald import metrics, names
from herald.broker import BROKER_ERRORS
from herald.logs import get_logger

log = get_logger(__name__)


class QueueDepthMonitor:
    def __init__(self, connection: AbstractRobustConnection, *, interval_s: float = 5.0) -> None:
        self.connection = connection
        self.interval_s = interval_s
        self.queues = [*names.all_work_queues(), names.DLQ]
        self._channel: AbstractRobustChannel | None = None
        self._task: asyncio.Task[None] | None = None

    async def sample(self) -> dict[str, int]:
        if self._channel is None or self._channel.is_closed:
            self._channel = cast(AbstractRobustChannel, await self.connection.channel())
        depths: dict[str, int] = {}
        for name in self.queues:
            # robust=False: a robust channel caches passive declares (and their counts).
            queue = await self._channel.declare_queue(name, passive=True, robust=False)
            depths[name] = queue.declaration_result.message_count or 0
            metrics.QUEUE_DEPTH.labels(name).set(depths[name])
        return depths

    def forget_channel(self) -> None:
        """After a broker error: open a fresh channel on the next sample."""
        self._channel = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                await self.sample()
            except BROKER_ERRORS as exc:
                log.debug("queue_depth_sample_failed", error=repr(exc))
                self.forget_channel()
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
