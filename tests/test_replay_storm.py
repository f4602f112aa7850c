"""Replay storms: 5,000 dead letters replayed in bulk with a rate cap hold the cap, and none
is sent twice, while on-call replays some of the same dead letters by hand."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import func, insert, select

from dlq.ingester import dead_letter_row
from herald import names
from herald.domain import (
    AttemptOutcome,
    Category,
    Channel,
    DeadLetterReason,
    Envelope,
    Priority,
    Status,
    utcnow,
)
from herald.ids import new_id
from herald.storage.models import (
    ApiKey,
    Attempt,
    DeadLetter,
    Notification,
    OutboxEntry,
    table_of,
)
from producer.auth import KeyStore
from tests.support.stack import (
    Stack,
    WorkerProcess,
    queue_depths,
    running_stack,
    stack_settings,
)

# 5,000 at 75/s is at least 67 s: the suite starts it first (conftest.py).
pytestmark = [pytest.mark.integration, pytest.mark.long]

COUNT = 5000
#: The job's rate cap. Replaying one dead letter costs the job about 10 ms of the API
#: process on a 2-core VM (one transaction and a publish; progress is saved twice a
#: second), so uncapped it averages about 70/s with busiest seconds near 100: a cap of 75
#: is close to what it can do, so a job that ignored its cap would fail (its busiest
#: second would pass 76). 5,000 at 75/s is 67 s however fast the machine.
CAP = 75
ERROR = "sandbox-sms: recipient rejected (sandbox)"
N, A, DL = table_of(Notification), table_of(Attempt), table_of(DeadLetter)


async def seed(stack: Stack, count: int) -> list[str]:
    """``count`` SMS that failed for good, stored as the worker and the DLQ ingester store
    them: status ``failed`` after one ``permanent_error`` attempt, and an open dead letter
    built by the ingester's own ``dead_letter_row`` from the headers a worker sets. Three
    executemany inserts instead of 5,000 sends, so the test spends its time on the replay.
    Returns the dead letter ids in the order a bulk replay takes them (oldest first)."""
    async with stack.sessions() as session:
        key_id = (
            await session.execute(select(ApiKey.id).where(ApiKey.name == "bootstrap"))
        ).scalar_one()
    headers = {
        names.HEADER_DLQ_REASON: DeadLetterReason.PERMANENT_ERROR.value,
        "x-herald-error": ERROR,
        "x-herald-error-code": "sandbox_permanent",
        "x-herald-provider": "sandbox-sms",
        "x-herald-attempts": 1,
    }
    notifications, attempts, dead_letters = [], [], []
    for i in range(count):
        now = utcnow()
        envelope = Envelope(
            id=new_id(),
            channel=Channel.SMS,
            to="+447400123456",
            category=Category.TRANSACTIONAL,
            priority=Priority.NORMAL,
            body=f"storm {i}",
            caller="bootstrap",
        )
        notifications.append(
            {
                "id": envelope.id,
                "api_key_id": key_id,
                "caller": envelope.caller,
                "channel": envelope.channel.value,
                "to_address": envelope.to,
                "category": envelope.category.value,
                "priority": envelope.priority.value,
                "body": envelope.body,
                "status": Status.FAILED.value,
                "generation": 0,
                "attempt_count": 1,
                "last_error": ERROR,
                "last_error_code": "sandbox_permanent",
                "last_provider": "sandbox-sms",
                "rules_version": 1,
                "created_at": now,
                "updated_at": now,
            }
        )
        attempts.append(
            {
                "notification_id": envelope.id,
                "generation": 0,
                "attempt_no": 1,
                "provider": "sandbox-sms",
                "outcome": AttemptOutcome.PERMANENT_ERROR.value,
                "error_code": "sandbox_permanent",
                "error": ERROR,
                "started_at": now,
                "finished_at": now,
                "latency_ms": 1.0,
            }
        )
        row, by_broker = dead_letter_row(envelope, headers)
        assert not by_broker
        dead_letters.append(row)
    async with stack.engine.begin() as conn:
        await conn.execute(insert(N), notifications)
        await conn.execute(insert(A), attempts)
        await conn.execute(insert(DL), dead_letters)
    async with stack.sessions() as session:
        order = await session.execute(select(DL.c.id).order_by(DL.c.dead_lettered_at, DL.c.id))
        return list(order.scalars())


async def progress(stack: Stack, replay_id: str) -> dict[str, Any]:
    response = await stack.client.get(f"/v1/dlq/replays/{replay_id}")
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


async def replay_by_hand_meanwhile(
    stack: Stack, replay_id: str, order: list[str], key: str
) -> dict[str, list[int]]:
    """While the job runs, on-call replays dead letters one by one: those the job is at
    right now (a race for the same rows) and one well ahead of it (on-call gets there
    first), each twice at once, as two people clicking. Returns the answers per dead letter."""
    answers: dict[str, list[int]] = defaultdict(list)

    async def replay(dead_letter_id: str) -> None:
        response = await stack.client.post(
            f"/v1/dlq/{dead_letter_id}/replay",
            json={"reason": "on-call, by hand"},
            headers={"Authorization": f"Bearer {key}"},
        )
        answers[dead_letter_id].append(response.status_code)

    while (state := await progress(stack, replay_id))["state"] == "running":
        at = state["replayed"] + state["refused"] + state["skipped"]
        targets = [*order[max(0, at - 1) : at + 3], *order[at + 300 : at + 301]]
        await asyncio.gather(*(replay(t) for t in targets for _ in range(2)))
        await asyncio.sleep(2)
    return answers


def busiest_second(times: list[datetime]) -> int:
    """The most timestamps in any half-open window [t, t + 1 s)."""
    times = sorted(times)
    most, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= timedelta(seconds=1):
            start += 1
        most = max(most, end - start + 1)
    return most


async def count_where(stack: Stack, model: Any, *conditions: Any) -> int:
    async with stack.sessions() as session:
        query = select(func.count()).select_from(model).where(*conditions)
        return int((await session.execute(query)).scalar_one())


async def wait_for_quiet(stack: Stack, timeout: float = 120) -> list[str]:
    """Until every notification is sent and the outbox is confirmed, so a late duplicate
    (a relay republish, a redelivery) is already in the sandbox when we count. Returns
    the notification ids."""
    deadline = time.monotonic() + timeout
    while True:
        unsent = await count_where(stack, N, N.c.status != Status.SENT.value)
        if not unsent and not await stack.count(OutboxEntry):
            break
        assert time.monotonic() < deadline, f"{unsent} replayed messages still not sent"
        await asyncio.sleep(0.25)
    async with stack.sessions() as session:
        return list((await session.execute(select(N.c.id))).scalars())


async def audit_entries(stack: Stack, **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, "limit": 500, **({"cursor": cursor} if cursor else {})}
        body = (await stack.client.get("/v1/audit", params=query)).json()
        out += body["items"]
        if (cursor := body["next_cursor"]) is None:
            return out


# PostgreSQL only. SQLite serialises writers (one connection per process, BEGIN
# IMMEDIATE), so a hand replay cannot race the job's conditional update on a row there,
# and the worker drains about 150/s against the job's writes, which makes 5,000 take
# minutes. The bulk replay tests in test_dlq_replay.py cover both databases.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.timeout(360)  # 67 s at the cap; 85-90 s measured, more on a busy 2-core VM
async def test_a_storm_of_5000_replays_holds_the_cap_and_sends_each_once(
    database_url: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    # The worker in its own process, as deployed: on two cores the API process (which
    # runs the job) and the deliveries do not take turns on one event loop.
    async with running_stack(stack_settings(database_url), workers=0) as stack:
        worker = WorkerProcess(stack.values, tmp_path / "worker.log").start()
        try:
            order = await seed(stack, COUNT)
            on_call = await KeyStore(stack.sessions).create("on-call", ["dlq:read", "dlq:write"])
            job = await stack.client.post(
                "/v1/dlq/replay",
                json={"channel": "sms", "reason": "permanent_error", "max_per_s": CAP},
            )
            assert job.status_code == 202 and job.json()["count"] == COUNT, job.text
            replay_id = job.json()["replay_id"]
            answers = await replay_by_hand_meanwhile(stack, replay_id, order, on_call)
            replayed = time.monotonic()
            nids = await wait_for_quiet(stack)
            stopped = await asyncio.to_thread(worker.terminate)  # off the loop: see test_faults
            assert stopped == 0, "the worker stops cleanly with nothing in hand"
        finally:
            worker.close()
        assert not any((await queue_depths(stack.settings)).values())

        # Every hand replay was refused or was the one replay of its dead letter.
        assert {code for codes in answers.values() for code in codes} <= {202, 409}
        assert all(codes.count(202) <= 1 for codes in answers.values())
        by_hand = {d for d, codes in answers.items() if 202 in codes}
        assert by_hand, "on-call got ahead of the job at least once"

        async with stack.sessions() as session:
            rows = (
                await session.execute(
                    select(DL.c.id, DL.c.state, DL.c.resolved_by, DL.c.resolved_at)
                )
            ).all()
        assert Counter(r.state for r in rows) == {"replayed": COUNT}
        resolved_by = {r.id: r.resolved_by for r in rows}
        assert {d for d, who in resolved_by.items() if who == "on-call"} == by_hand
        lost = [d for d, codes in answers.items() if d not in by_hand]
        assert lost and all(resolved_by[d] == "bootstrap" for d in lost), "the job was first"

        # (c) the job ends done and replayed everything on-call had not. A dead letter
        # on-call took while the job held it in its current batch counts as refused; one
        # taken before the job read its batch is no longer open, never comes up, and is
        # reported as resolved elsewhere.
        done = await progress(stack, replay_id)
        assert done["state"] == "done" and done["total"] == COUNT
        assert done["replayed"] == COUNT - len(by_hand)
        assert done["skipped"] == 0
        assert done["refused"] + done["resolved_elsewhere"] == len(by_hand)

        # (a) the cap, read from when each of the job's replays was recorded: resolved_at
        # is the first thing a replay takes, with no await after the job's pacing sleep.
        # Replays start at least 1/max_per_s apart on the loop's monotonic clock, so a
        # 1 s window holds at most max_per_s of them; the tolerance of 1 is for the
        # stored times being the wall clock, which a slewing NTP can run a few µs short
        # of the monotonic one, enough to fit one more replay on a window's edge.
        peak = busiest_second([r.resolved_at for r in rows if r.resolved_by == "bootstrap"])
        assert peak <= CAP + 1

        # (b) each of the 5,000 reached the sandbox exactly once, in its replayed generation.
        copies = await stack.sandbox_copies(nids)
        assert Counter(copies.values()) == {1: COUNT}, "none sent twice, none missing"
        recorded = [
            orjson.loads(raw)
            for raw in await stack.redis.lrange(names.sandbox_messages_key(), 0, -1)
        ]
        assert Counter(m["notification_id"] for m in recorded) == dict.fromkeys(nids, 1)
        assert {m["generation"] for m in recorded} == {1}
        assert await count_where(stack, N, N.c.generation != 1) == 0

        # The audit log has one replay per dead letter, by whoever won it.
        by_job = await audit_entries(stack, action="dlq.replay", actor="bootstrap")
        by_person = await audit_entries(stack, action="dlq.replay", actor="on-call")
        assert len(by_job) == COUNT - len(by_hand) and len(by_person) == len(by_hand)
        assert Counter(e["target"] for e in by_job + by_person) == dict.fromkeys(nids, 1)
        [bulk] = await audit_entries(stack, action="dlq.bulk_replay")
        assert bulk["target"] == replay_id
    print(
        f"\nstorm: {COUNT} at a cap of {CAP:g}/s, busiest second {peak}; replayed in "
        f"{replayed - started:.0f} s, {time.monotonic() - started:.0f} s in all; "
        f"{len(by_hand)} won by hand, {done['refused']} of them refused by the job, "
        f"{sum(map(len, answers.values()))} hand replays"
    )
