"""Transactional outbox: publish right after commit; a relay republishes what was missed.

A row lives in ``outbox`` until RabbitMQ confirms its message. The API publishes it in
the background as soon as the request's transaction commits; if that fails (broker down,
process killed) the relay finds the row once its short lease (``available_at``) passes
and publishes it. Both paths may publish the same row twice: workers dedupe by claim.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import cast

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from config.settings import Settings
from herald import metrics, names
from herald.broker import BROKER_ERRORS, Publisher
from herald.domain import Status, utcnow
from herald.logs import get_logger
from herald.storage.db import SessionFactory
from herald.storage.models import IdempotencyKey, Notification, OutboxEntry, table_of

log = get_logger(__name__)
OUTBOX = table_of(OutboxEntry)
N = table_of(Notification)


class Outbox:
    def __init__(
        self,
        sessions: SessionFactory,
        publisher: Publisher,
        settings: Settings,
        *,
        max_background: int = 512,
        flush_every_s: float = 0.05,
    ) -> None:
        self.sessions = sessions
        self._engine = cast(AsyncEngine, sessions.kw["bind"])
        self.publisher = publisher
        self.settings = settings
        self.max_background = max_background
        self.flush_every_s = flush_every_s
        self._tasks: set[asyncio.Task[bool]] = set()
        self._confirmed: list[tuple[int, str]] = []
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []

    # -- publishing -------------------------------------------------------------------

    def publish_soon(
        self, entry_id: int, notification_id: str, routing_key: str, payload: bytes
    ) -> None:
        """Publish in the background; when saturated, leave the row to the relay."""
        if len(self._tasks) >= self.max_background or not self.publisher.connected:
            return
        task = asyncio.create_task(self._publish(entry_id, notification_id, routing_key, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(
        self, entry_id: int, notification_id: str, routing_key: str, payload: bytes
    ) -> bool:
        try:
            await self.publisher.publish(
                names.EXCHANGE, routing_key, payload, notification_id=notification_id
            )
        except BROKER_ERRORS as exc:
            log.debug("publish_deferred_to_relay", notification_id=notification_id, error=repr(exc))
            return False
        self._confirmed.append((entry_id, notification_id))
        if len(self._confirmed) >= 200:
            self._wake.set()
        return True

    async def flush_confirmed(self) -> int:
        """Forget confirmed rows and mark their notifications ``queued``, in one transaction."""
        if not self._confirmed:
            return 0
        batch, self._confirmed = self._confirmed, []
        ids = [entry_id for entry_id, _ in batch]
        notification_ids = [nid for _, nid in batch]
        try:
            async with self._engine.begin() as conn:  # Core: no ORM session per flush
                await conn.execute(delete(OUTBOX).where(OUTBOX.c.id.in_(ids)))
                await conn.execute(
                    update(N)
                    .where(N.c.id.in_(notification_ids), N.c.status == Status.ACCEPTED.value)
                    .values(status=Status.QUEUED.value, updated_at=utcnow())
                )
        except Exception:
            self._confirmed.extend(batch)  # try again next time; a relay republish is harmless
            raise
        return len(batch)

    # -- relay ------------------------------------------------------------------------

    async def relay_once(self, limit: int = 200) -> int:
        """Publish every row whose lease has passed; returns how many were confirmed."""
        now = utcnow()
        lease = now + timedelta(seconds=self.settings.outbox_relay_after_s)
        async with self.sessions.begin() as session:
            due = (
                select(OUTBOX.c.id)
                .where(OUTBOX.c.available_at <= now)
                .order_by(OUTBOX.c.available_at)
                .limit(limit)
            )
            rows = (
                await session.execute(
                    update(OUTBOX)
                    .where(OUTBOX.c.id.in_(due.scalar_subquery()), OUTBOX.c.available_at <= now)
                    .values(available_at=lease, publish_attempts=OUTBOX.c.publish_attempts + 1)
                    .returning(
                        OUTBOX.c.id,
                        OUTBOX.c.notification_id,
                        OUTBOX.c.routing_key,
                        OUTBOX.c.payload,
                    )
                )
            ).all()
        if not rows:
            return 0
        results = await asyncio.gather(
            *(self._publish(r.id, r.notification_id, r.routing_key, r.payload) for r in rows)
        )
        await self.flush_confirmed()
        sent = sum(results)
        log.info("outbox_relayed", due=len(rows), confirmed=sent)
        return sent

    async def backlog(self) -> int:
        async with self.sessions() as session:
            return int(
                (await session.execute(select(func.count()).select_from(OUTBOX))).scalar_one()
            )

    async def purge_idempotency_keys(self) -> None:
        cutoff = utcnow() - timedelta(seconds=self.settings.idempotency_ttl_s)
        async with self.sessions.begin() as session:
            await session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff))

    # -- background loops -------------------------------------------------------------

    def start(self, *, relay: bool) -> None:
        self._loops.append(asyncio.create_task(self._flush_loop()))
        if relay:
            self._loops.append(asyncio.create_task(self._relay_loop()))

    async def _flush_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.flush_every_s)
            self._wake.clear()
            try:
                await self.flush_confirmed()
            except Exception as exc:  # noqa: BLE001 - keep the loop alive; rows stay for the relay
                log.warning("outbox_flush_failed", error=repr(exc))
                await asyncio.sleep(1)

    async def _relay_loop(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(self.settings.outbox_relay_interval_s)
            ticks += 1
            try:
                while await self.relay_once() > 0:
                    pass
                metrics.OUTBOX_BACKLOG.set(await self.backlog())
                if ticks % 600 == 0:
                    await self.purge_idempotency_keys()
            except Exception as exc:  # noqa: BLE001 - the relay must outlive outages
                log.warning("outbox_relay_failed", error=repr(exc))

    async def stop(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        self._loops.clear()
        with contextlib.suppress(Exception):
            await self.flush_confirmed()
