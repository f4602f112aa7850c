"""Batched delivery lanes: plan → act → settle for the messages already waiting.

One lane per queue. It takes the message in hand plus whatever else is waiting (up to
``worker_batch_max``; no timer, so a quiet queue's message goes alone and at once) and,
for the common case (``workers/batch_plan.py``):

1. plans each message (pure), claims the batch in one Redis pipeline,
2. starts it in one transaction (every attempt ``sending``, committed before any call),
3. calls the vendors concurrently,
4. hands each accepted send to the lane's settler, which records every send waiting in
   one transaction, marks them done and counts them in one Redis pipeline, publishes
   their events (no confirms), and only then acks them.

A message is acked only after its outcome is recorded. Anything unusual (unreadable,
an OTP, expired, a claim held elsewhere, a row to reconcile, a failed call, a throttled
or half-open provider, a batch transaction that failed) continues on ``Delivery``'s
one-by-one path, which owns those rules and decides its own ack.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from aio_pika.abc import AbstractIncomingMessage
from redis.exceptions import RedisError

from herald import metrics
from herald.domain import Envelope, EnvelopeError, utcnow
from herald.logs import get_logger
from providers.base import Receipt
from router.rules import RoutingRules
from workers.batch_plan import FastSend, choose_fast
from workers.claims import ClaimResult
from workers.delivery import Delivery, Disposition
from workers.store import URGENT, BatchStart, Lease, SentRecord, Started

log = get_logger(__name__)

Ack = Callable[[AbstractIncomingMessage, Disposition], Awaitable[None]]


@dataclass(slots=True)
class Incoming:
    message: AbstractIncomingMessage
    queue: str
    received: float = field(default_factory=time.perf_counter)
    dispatched: bool = False  # handed to a task that ends in its ack or put-back


@dataclass(frozen=True, slots=True)
class Accepted:
    """A send a vendor took, waiting for the settler."""

    incoming: Incoming
    envelope: Envelope
    started: Started
    receipt: Receipt
    latency_ms: float
    owner: str


class Lane:
    def __init__(self, delivery: Delivery, ack: Ack, *, batch_max: int, urgent: bool) -> None:
        self.delivery = delivery
        self.ctx = delivery.ctx
        self.ack = ack
        self.batch_max = batch_max
        self.urgent = urgent
        self._waiting: asyncio.Queue[Incoming] = asyncio.Queue()
        self._accepted: asyncio.Queue[Accepted] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self.in_hand = 0  # received and not yet acked or put back
        self.idle = asyncio.Event()
        self.idle.set()

    def start(self) -> None:
        self._loops = [asyncio.create_task(self._run()), asyncio.create_task(self._settle())]

    async def close(self) -> None:
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)

    def put(self, message: AbstractIncomingMessage, queue: str) -> None:
        self.in_hand += 1
        self.idle.clear()
        self._waiting.put_nowait(Incoming(message, queue))

    # -- the lane ------------------------------------------------------------------------

    async def _run(self) -> None:
        URGENT.set(self.urgent)  # inherited by every task this lane starts
        while True:
            batch = [await self._waiting.get()]
            while len(batch) < self.batch_max and not self._waiting.empty():
                batch.append(self._waiting.get_nowait())
            started_at = time.perf_counter()
            metrics.BATCH_SIZE.labels("start").observe(len(batch))
            for item in batch:
                metrics.BATCH_WAIT.observe(started_at - item.received)
            try:
                await self._start(batch)
            except Exception:  # never lose the lane; the rest goes one by one
                log.exception("delivery_batch_crashed", size=len(batch))
                for item in batch:
                    if not item.dispatched:
                        self._dispatch(item, self._one_by_one(item))

    async def _start(self, batch: list[Incoming]) -> None:
        """Plan, claim and start the batch; hand the rest to the one-by-one path."""
        ctx = self.ctx
        now = utcnow()
        rules = ctx.rules()
        try:
            available = await ctx.breakers.availability(rules.providers)
        except RedisError:
            for item in batch:
                self._dispatch(item, self._one_by_one(item))
            return
        fast: list[tuple[Incoming, FastSend]] = []
        for item in batch:
            choice = self._plan(item, now, rules, available)
            if choice is None:
                self._dispatch(item, self._one_by_one(item))
            else:
                fast.append((item, choice))
        if not fast:
            return
        try:
            claims = await ctx.claims.acquire_many(
                [(c.message.id, c.message.generation) for _, c in fast]
            )
        except RedisError:
            for item, _ in fast:  # the one-by-one path defers on an outage, bounded
                self._dispatch(item, self._one_by_one(item))
            return
        claimed: list[tuple[Incoming, FastSend]] = []
        for (item, choice), claim in zip(fast, claims, strict=True):
            if claim is ClaimResult.ACQUIRED:
                claimed.append((item, choice))
            elif claim is ClaimResult.DONE:
                metrics.DUPLICATES_SKIPPED.labels("already_sent").inc()
                self._dispatch(item, self._finish(item, Disposition.ACK))
            else:
                self._dispatch(item, self._one_by_one(item))
        if not claimed:
            return
        owner = self.delivery.new_owner()
        lease = Lease(owner, now + timedelta(seconds=self.delivery.lease_s))
        starts = [BatchStart(c.message.id, c.message.generation, c.provider) for _, c in claimed]
        try:
            started = await ctx.store.begin_many(starts, now, lease, rules.version)
        except Exception as exc:  # noqa: BLE001 - a failed batch goes one by one
            log.warning("delivery_batch_begin_failed", size=len(claimed), error=repr(exc))
            started = {}
        for item, choice in claimed:
            begun = started.get(choice.message.id)
            if begun is None:
                # Not startable as a batch (held, interrupted, final, timed out, or the
                # transaction failed): the one-by-one path reads the row and decides.
                await self.delivery.release_quietly(choice.message)
                self._dispatch(item, self._one_by_one(item))
            else:
                self._dispatch(item, self._act(item, choice, begun, owner, rules))

    def _plan(
        self, item: Incoming, now: datetime, rules: RoutingRules, available: dict[str, bool]
    ) -> FastSend | None:
        try:
            envelope = Envelope.from_bytes(item.message.body)
        except EnvelopeError:
            return None
        return choose_fast(envelope, now, rules, available, lambda p: self._usable(p, rules))

    def _usable(self, name: str, rules: RoutingRules) -> bool:
        """Built, breaker plainly closed, and no ``max_per_s`` slot to book."""
        ctx = self.ctx
        provider = ctx.providers.get(name)
        if provider is None or not ctx.breakers.closed(name):
            return False
        spec = rules.providers.get(name)
        return not (
            (spec is not None and spec.max_per_s) or getattr(provider, "default_max_per_s", None)
        )

    async def _act(
        self, item: Incoming, choice: FastSend, begun: Started, owner: str, rules: RoutingRules
    ) -> None:
        message = choice.message
        provider = self.ctx.providers[choice.provider]
        body, headers = item.message.body, item.message.headers or {}
        work: Callable[[], Awaitable[Disposition]]
        try:
            outcome, latency = await self.delivery.send_once(message, provider)
        except Exception as exc:  # noqa: BLE001 - an adapter bug: the crash rules apply
            error = exc

            async def crashed() -> Disposition:
                raise error

            work = crashed
        else:
            if isinstance(outcome, Receipt):
                self._accepted.put_nowait(Accepted(item, message, begun, outcome, latency, owner))
                return
            failure = outcome

            async def failed() -> Disposition:
                return await self.delivery.after_first_call(
                    message,
                    body,
                    headers,
                    rules=rules,
                    remaining=choice.remaining,
                    attempt_id=begun.attempt_id,
                    attempt_no=begun.attempt_no,
                    owner=owner,
                    failure=failure,
                    latency_ms=latency,
                    now=utcnow(),
                )

            work = failed
        disposition = await self.delivery.resume(
            message,
            body,
            headers,
            work,
            message_id=item.message.message_id,
            queue=item.queue,
        )
        await self._finish(item, disposition)

    # -- the settler ---------------------------------------------------------------------

    async def _settle(self) -> None:
        URGENT.set(self.urgent)
        while True:
            batch = [await self._accepted.get()]
            while not self._accepted.empty():
                batch.append(self._accepted.get_nowait())
            metrics.BATCH_SIZE.labels("settle").observe(len(batch))
            try:
                await self._settle_batch(batch)
            except Exception:  # never lose the settler
                log.exception("delivery_settle_crashed", size=len(batch))
                for accepted in batch:
                    self._spawn(self._settle_alone(accepted))

    async def _settle_batch(self, batch: list[Accepted]) -> None:
        ctx = self.ctx
        now = utcnow()
        records = [
            SentRecord(
                a.envelope.id,
                a.started.attempt_id,
                a.receipt.vendor_message_id,
                a.latency_ms,
                now,
            )
            for a in batch
        ]
        try:
            await ctx.store.settle_sent(records)
        except Exception as exc:  # noqa: BLE001 - each send is then recorded by itself
            log.warning("delivery_settle_failed", size=len(batch), error=repr(exc))
            for accepted in batch:
                self._spawn(self._settle_alone(accepted))
            return
        latencies: dict[str, list[float]] = {}
        for a in batch:
            latencies.setdefault(a.receipt.provider, []).append(a.latency_ms)
        try:
            await ctx.claims.mark_done_many([(a.envelope.id, a.envelope.generation) for a in batch])
            await ctx.breakers.record_successes(latencies)
        except RedisError as exc:
            # Recorded in the database already: a redelivered copy is skipped there.
            log.warning("delivery_done_marks_failed", size=len(batch), error=repr(exc))
        for a in batch:
            await ctx.events.publish("sent", a.envelope, provider=a.receipt.provider)
        for a in batch:
            await self._finish(a.incoming, Disposition.ACK)

    async def _settle_alone(self, accepted: Accepted) -> None:
        item = accepted.incoming

        async def work() -> Disposition:
            return await self.delivery.sent_alone(
                accepted.envelope,
                accepted.started.attempt_id,
                accepted.receipt,
                accepted.latency_ms,
                accepted.owner,
            )

        disposition = await self.delivery.resume(
            accepted.envelope,
            item.message.body,
            item.message.headers or {},
            work,
            message_id=item.message.message_id,
            queue=item.queue,
        )
        await self._finish(item, disposition)

    # -- one by one, and the end of every message ----------------------------------------

    async def _one_by_one(self, item: Incoming) -> None:
        message = item.message
        try:
            disposition = await self.delivery.handle(
                message.body, message.headers, message_id=message.message_id, queue=item.queue
            )
        except Exception:  # handle dead-letters crashes itself
            log.exception("delivery_crash_unhandled")
            disposition = Disposition.REQUEUE
        await self._finish(item, disposition)

    async def _finish(self, item: Incoming, disposition: Disposition) -> None:
        try:
            await self.ack(item.message, disposition)
        except Exception as exc:  # noqa: BLE001 - a lost channel: RabbitMQ redelivers
            log.warning("ack_failed", queue=item.queue, error=repr(exc))
        finally:
            self.in_hand -= 1
            if self.in_hand == 0:
                self.idle.set()

    def _dispatch(self, item: Incoming, work: Awaitable[None]) -> None:
        item.dispatched = True
        self._spawn(work)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
