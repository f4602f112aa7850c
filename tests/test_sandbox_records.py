"""Sandbox records written together (a delivery batch) read exactly as if written one by
one: newest first in every list, each list trimmed to its cap, every index findable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from providers.sandbox import Query, SandboxStore
from tests.support.stack import TEST_REDIS_URL

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(TEST_REDIS_URL)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.flushdb()
        await client.aclose()


def entry(n: int, to: str = "+447400123456", caller: str = "svc") -> dict[str, object]:
    return {
        "notification_id": f"n-{n}",
        "generation": 0,
        "provider": "sandbox-sms",
        "to": to,
        "caller": caller,
        "body": f"message {n}",
    }


async def test_records_of_one_batch_read_newest_first_and_trimmed(redis: Redis) -> None:
    store = SandboxStore(redis, keep=3)
    # Five concurrent sends: their records share one pipeline.
    await asyncio.gather(*(store.record(entry(n)) for n in range(5)))
    assert store._records.stats.batches == 1

    everything = await store.find(Query(limit=10))
    assert [r["notification_id"] for r in everything] == ["n-4", "n-3", "n-2"]
    by_recipient = await store.find(Query(to="+447400123456", limit=10))
    assert [r["notification_id"] for r in by_recipient] == ["n-4", "n-3", "n-2"]
    assert [r["body"] for r in await store.sent_for("n-0")] == ["message 0"]


async def test_a_batch_keeps_each_recipient_and_caller_apart(redis: Redis) -> None:
    store = SandboxStore(redis)
    await asyncio.gather(
        store.record(entry(1, to="+447400000001", caller="a")),
        store.record(entry(2, to="+447400000002", caller="b")),
        store.record(entry(3, to="+447400000001", caller="b")),
    )
    first = await store.find(Query(to="+447400000001"))
    assert [r["notification_id"] for r in first] == ["n-3", "n-1"]
    of_b = await store.find(Query(caller="b"))
    assert [r["notification_id"] for r in of_b] == ["n-3", "n-2"]


async def test_an_otp_text_in_a_batch_is_kept_apart_and_masked(redis: Redis) -> None:
    store = SandboxStore(redis)
    await asyncio.gather(
        store.record(entry(1), otp_text_ttl=60), store.record(entry(2), otp_text_ttl=None)
    )
    masked = {r["notification_id"]: r["body"] for r in await store.find(Query())}
    assert masked == {"n-1": "[redacted]", "n-2": "message 2"}
    revealed = {r["notification_id"]: r["body"] for r in await store.find(Query(reveal_otp=True))}
    assert revealed["n-1"] == "message 1"
