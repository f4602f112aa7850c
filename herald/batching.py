"""Batching for awaited I/O: concurrent callers share one round trip, each told its own result.

Callers ``submit`` an item and wait; one task per batcher takes everything queued and
hands it to ``write``, which returns one result per item, in order. There is no timer: an
idle batcher starts on the first item at once, and items that arrive while a batch is in
flight form the next one. Used for group-committed accepts (:mod:`producer.group_commit`)
and for the rate-limit scripts of concurrent requests (:mod:`ratelimit.redis`).

When a batch fails, a failure all its items share (``shared_failure``: the server down,
locked, timed out) fails every item; any other failure may be one bad item's, so the
items are written again one at a time and only an item that fails on its own fails.

An item that waits longer than ``wait_s`` before its batch starts is dropped unwritten
and fails with ``timeout_error(wait_s)``: a slow server gives a prompt error instead of a
growing queue, and a caller that gave up is never written later.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Write = Callable[[Sequence[T]], Awaitable[Sequence[R]]]


@dataclass(eq=False, slots=True)
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    deadline: float  # loop time after which it is dropped if still queued

    def resolve(self, result: R) -> None:
        if not self.future.done():
            self.future.set_result(result)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


@dataclass(frozen=True, slots=True)
class BatchStats:
    """What the writer did so far (tests and metrics read it)."""

    batches: int
    rows: int
    largest: int
    singles_after_failure: int


class Batcher(Generic[T, R]):
    def __init__(
        self,
        write: Write[T, R],
        *,
        wait_s: float,
        shared_failure: Callable[[BaseException], bool],
        max_batch: int = 256,
        timeout_error: Callable[[float], BaseException],
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._write = write
        self._wait_s = wait_s
        self._shared_failure = shared_failure
        self._max_batch = max_batch
        self._on_batch = on_batch
        self._timeout_error = timeout_error
        self._queue: collections.deque[_Pending[T, R]] = collections.deque()
        self._writer: asyncio.Task[None] | None = None
        #: One timer for the oldest queued item, armed only while a batch is in flight
        #: (an idle batcher takes an item at once): no timer per item.
        self._watchdog: asyncio.TimerHandle | None = None
        self._batches = self._rows = self._largest = self._singles = 0

    @property
    def stats(self) -> BatchStats:
        return BatchStats(self._batches, self._rows, self._largest, self._singles)

    async def submit(self, item: T) -> R:
        """Queue ``item`` and wait until the batch holding it is written."""
        loop = asyncio.get_running_loop()
        pending: _Pending[T, R] = _Pending(item, loop.create_future(), loop.time() + self._wait_s)
        self._queue.append(pending)
        if self._writer is None:
            self._writer = loop.create_task(self._run())
        elif self._watchdog is None:
            self._watchdog = loop.call_at(pending.deadline, self._expire_due)
        return await pending.future

    def _expire_due(self) -> None:
        """Fail the queued items whose deadline passed (they are never written), oldest
        first, and wait for the next one's."""
        self._watchdog = None
        now = asyncio.get_running_loop().time()
        queue = self._queue
        while queue and (queue[0].future.done() or queue[0].deadline <= now):
            queue.popleft().fail(self._timeout_error(self._wait_s))
        if queue:
            self._watchdog = asyncio.get_running_loop().call_at(queue[0].deadline, self._expire_due)

    def _take(self) -> list[_Pending[T, R]]:
        batch: list[_Pending[T, R]] = []
        while self._queue and len(batch) < self._max_batch:
            pending = self._queue.popleft()
            if pending.future.done():  # its caller was cancelled
                continue
            batch.append(pending)
        return batch

    async def _run(self) -> None:
        try:
            while self._queue:
                batch = self._take()
                if batch:
                    await self._commit(batch)
        finally:
            self._writer = None
            if self._watchdog is not None:
                self._watchdog.cancel()
                self._watchdog = None
            while self._queue:  # only if the writer itself was cancelled
                self._queue.popleft().fail(asyncio.CancelledError())

    async def _commit(self, batch: list[_Pending[T, R]]) -> None:
        self._batches += 1
        self._rows += len(batch)
        self._largest = max(self._largest, len(batch))
        if self._on_batch is not None:
            self._on_batch(len(batch))
        try:
            results = await self._write([p.item for p in batch])
        except asyncio.CancelledError as exc:
            for pending in batch:
                pending.fail(exc)
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the requests it belongs to
            if len(batch) == 1 or self._shared_failure(exc):
                for pending in batch:
                    pending.fail(exc)
                return
            await self._one_by_one(batch)
            return
        for pending, result in zip(batch, results, strict=True):
            pending.resolve(result)

    async def _one_by_one(self, batch: list[_Pending[T, R]]) -> None:
        """After a failed batch: each item alone, so only a bad item fails its caller."""
        for index, pending in enumerate(batch):
            self._singles += 1
            try:
                (result,) = await self._write([pending.item])
            except asyncio.CancelledError as exc:
                for rest in batch[index:]:
                    rest.fail(exc)
                raise
            except Exception as exc:  # noqa: BLE001 - this row's own failure
                if self._shared_failure(exc):  # the database went away meanwhile
                    for rest in batch[index:]:
                        rest.fail(exc)
                    return
                pending.fail(exc)
            else:
                pending.resolve(result)
