"""Bulk replays: every open dead letter matching a filter, at a capped rate, resumable.

The job row keeps the filter, the counts and a (time, id) cursor, saved every half
second, so a restarted API continues from about where the last one was: what it had
replayed is no longer open, so it is never sent twice (only counts of the last half
second before a crash can be missing). One process works a job at a time through a
lease on its row.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from dlq import audit
from dlq.queries import DeadLetterFilter, oldest_after
from dlq.replay import DeadLetters, ReplayRefused
from herald.domain import utcnow
from herald.ids import new_id
from herald.logs import get_logger
from herald.storage.db import SessionFactory
from herald.storage.models import ReplayJob, table_of

log = get_logger(__name__)
JOBS = table_of(ReplayJob)
LEASE = timedelta(seconds=15)
#: Progress (counts and cursor) is written at most this often, not per replay: a replay
#: is what makes it safe to resume (a replayed dead letter is no longer open, so a
#: restarted job re-reading from an older cursor skips it); the counts can only lag.
SAVE_EVERY_S = 0.5


def filter_of(raw: dict[str, Any]) -> DeadLetterFilter:
    values = dict(raw)
    for key in ("since", "until"):
        if values.get(key):
            values[key] = datetime.fromisoformat(values[key])
    return DeadLetterFilter(**values, state="open", replayable=True)


def progress(row: Any) -> dict[str, Any]:
    done = row.replayed + row.skipped + row.refused
    return {
        "replay_id": row.id,
        "state": row.state,
        "total": row.total,
        "replayed": row.replayed,
        "skipped": row.skipped,
        "refused": row.refused,
        #: Matched when the job started, then replayed or discarded by someone else
        #: before the job reached them (known once the job is done).
        "resolved_elsewhere": max(row.total - done, 0) if row.state == "done" else None,
        "max_per_s": row.max_per_s,
        "override_provider": row.override_provider,
        "created_by": row.created_by,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }


#: How long a stop waits for the replay or save in progress before cancelling it.
STOP_GRACE_S = 5.0


class BulkReplayer:
    def __init__(self, sessions: SessionFactory, dead_letters: DeadLetters, *, owner: str) -> None:
        self.sessions = sessions
        self.dead_letters = dead_letters
        self.owner = owner
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()

    async def create(
        self,
        filters: dict[str, Any],
        total: int,
        *,
        actor: str,
        override_provider: str | None,
        max_per_s: float,
        reason: str | None,
    ) -> str:
        """Start a job; the audit entry commits with it."""
        job_id = new_id()
        now = utcnow()
        async with self.sessions.begin() as session:
            await session.execute(
                JOBS.insert().values(
                    id=job_id,
                    filters=filters,
                    override_provider=override_provider,
                    max_per_s=max_per_s,
                    reason=reason,
                    state="running",
                    total=total,
                    replayed=0,
                    skipped=0,
                    refused=0,
                    created_by=actor,
                    created_at=now,
                    updated_at=now,
                )
            )
            await audit.record(
                session,
                actor=actor,
                action="dlq.bulk_replay",
                target=job_id,
                reason=reason,
                details={
                    "filters": filters,
                    "count": total,
                    "max_per_s": max_per_s,
                    "override_provider": override_provider,
                },
            )
        self._wake.set()
        return job_id

    async def get(self, job_id: str) -> dict[str, Any] | None:
        async with self.sessions() as session:
            row = (await session.execute(select(JOBS).where(JOBS.c.id == job_id))).first()
        return progress(row) if row else None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop between two items, the counts saved once: a cancel landing inside a
        replay or a save (after its commit) would lose a count or add it twice. Only a
        step that outlives ``grace_s`` is cancelled."""
        if self._task is None:
            return
        self._stopping.set()
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=grace_s)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                job = await self._claim()
                if job is not None:
                    await self._run(job)
                    continue
            except Exception as exc:  # noqa: BLE001 - a bad step must not end bulk replays
                log.warning("bulk_replay_step_failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=1)
            self._wake.clear()

    async def _claim(self) -> Any:
        """Take a running job nobody holds (or whose holder stopped renewing its lease)."""
        now = utcnow()
        async with self.sessions.begin() as session:
            row = (
                await session.execute(
                    select(JOBS)
                    .where(JOBS.c.state == "running")
                    .where(
                        or_(
                            JOBS.c.lease_until.is_(None),
                            JOBS.c.lease_until < now,
                            JOBS.c.lease_owner == self.owner,
                        )
                    )
                    .order_by(JOBS.c.created_at)
                    .limit(1)
                )
            ).first()
            if row is None:
                return None
            await session.execute(
                update(JOBS)
                .where(JOBS.c.id == row.id)
                .values(lease_owner=self.owner, lease_until=now + LEASE)
            )
        return row

    async def _run(self, job: Any) -> None:
        filters = filter_of(job.filters)
        progress = _Unsaved((job.cursor_at, job.cursor_id) if job.cursor_at else None)
        try:
            while not self._stopping.is_set():
                batch = await oldest_after(self.sessions, filters, progress.cursor, 50)
                if not batch:
                    await self._save(job.id, state="done", progress=progress)
                    log.info("bulk_replay_done", replay_id=job.id)
                    return
                await self._replay_batch(job, batch, progress)
        finally:
            if progress.counts:  # stopping, or a failed step: keep what was done
                try:
                    await self._save(job.id, progress=progress)
                except SQLAlchemyError as exc:
                    log.warning("bulk_replay_progress_lost", replay_id=job.id, error=repr(exc))

    async def _replay_batch(self, job: Any, batch: list[Any], progress: _Unsaved) -> None:
        """Replay ``batch`` at the job's pace, saving progress every ``SAVE_EVERY_S``."""
        clock = asyncio.get_running_loop().time
        interval = 1 / job.max_per_s
        for dead in batch:
            if self._stopping.is_set():
                return
            started = clock()
            outcome = "refused"
            try:
                result = await self.dead_letters.replay(
                    dead.id,
                    actor=job.created_by,
                    provider=job.override_provider,
                    reason=job.reason or f"bulk replay {job.id}",
                )
                outcome = "replayed" if result.status == "accepted" else "skipped"
            except ReplayRefused:
                pass
            progress.counts[outcome] += 1
            progress.cursor = (dead.dead_lettered_at, dead.id)
            if clock() - progress.saved_at >= SAVE_EVERY_S:
                await self._save(job.id, progress=progress)
            spent = clock() - started
            if spent < interval:
                with contextlib.suppress(TimeoutError):  # a stop ends the wait at once
                    await asyncio.wait_for(self._stopping.wait(), timeout=interval - spent)

    async def _save(self, job_id: str, *, progress: _Unsaved, state: str | None = None) -> None:
        """Add the unsaved counts and move the cursor (then the counts start again)."""
        now = utcnow()
        values: dict[str, Any] = {"updated_at": now, "lease_until": now + LEASE}
        if state:
            values["state"] = state
        for counter, n in progress.counts.items():
            values[counter] = getattr(JOBS.c, counter) + n
        if progress.cursor:
            values["cursor_at"], values["cursor_id"] = progress.cursor
        async with self.sessions.begin() as session:
            await session.execute(update(JOBS).where(JOBS.c.id == job_id).values(**values))
        progress.counts.clear()
        progress.saved_at = asyncio.get_running_loop().time()


@dataclass(slots=True)
class _Unsaved:
    """A running job's progress since it was last written."""

    cursor: tuple[datetime, str] | None
    counts: Counter[str] = field(default_factory=Counter)
    saved_at: float = field(default_factory=lambda: asyncio.get_running_loop().time())
