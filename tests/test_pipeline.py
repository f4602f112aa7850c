"""Send → RabbitMQ → worker → sandbox provider → recorded, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import datetime

import aio_pika
import orjson
import pytest

from herald import names
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.integration

SMS_TO = "+447911123456"


@pytest.mark.parametrize(
    ("channel", "to", "extra"),
    [
        ("sms", SMS_TO, {}),
        ("email", "alice@example.com", {"subject": "Your receipt"}),
        ("push", "fcm-token_abc:123", {"data": {"order": "42"}}),
    ],
)
async def test_each_channel_reaches_sent(stack: Stack, channel: str, to: str, extra: dict) -> None:
    response = await stack.send(
        channel=channel, to=to, category="transactional", body="Hello", **extra
    )
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "accepted"
    assert response.headers["location"] == f"/v1/notifications/{accepted['id']}"

    done = await stack.wait_status(accepted["id"], "sent")
    assert [a["outcome"] for a in done["attempts"]] == ["sent"]
    assert done["attempts"][0]["provider"] == f"sandbox-{channel}"
    [delivered] = await stack.sandbox(accepted["id"])
    assert delivered["to"] == to
    assert delivered["body"] == "Hello"


async def test_transient_failures_then_success_back_off_exponentially(settings_for) -> None:

    no_jitter = {"base_s": 0.1, "factor": 2, "cap_s": 0.8, "max_attempts": 6, "jitter": False}
    values = settings_for(backoff={"transactional": no_jitter})
    async with running_stack(values) as stack:
        await stack.set_sandbox("sandbox-sms", "transient")
        response = await stack.send(channel="sms", to=SMS_TO, category="transactional", body="hi")
        nid = response.json()["id"]
        while len((await stack.notification(nid))["attempts"]) < 3:
            await asyncio.sleep(0.01)
        await stack.set_sandbox("sandbox-sms", "ok")
        done = await stack.wait_status(nid, "sent")
        assert len(await stack.sandbox(nid)) == 1

    outcomes = [a["outcome"] for a in done["attempts"]]
    assert outcomes[:3] == ["transient_error"] * 3 and outcomes[-1] == "sent"
    assert all(a["error_code"] == "sandbox_transient" for a in done["attempts"][:-1])
    starts = [datetime.fromisoformat(a["started_at"]) for a in done["attempts"]]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
    # 100 ms, 200 ms, 400 ms …: each wait lasts at least its step (the retry queue's TTL).
    # Only lower bounds: a stalled machine stretches any wait, never shortens one.
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2 and gaps[2] >= 0.4


async def test_permanent_failure_fails_at_once_and_is_dead_lettered(stack: Stack) -> None:
    await stack.set_sandbox("sandbox-sms", "permanent")
    nid = (await stack.send(channel="sms", to=SMS_TO, category="transactional", body="x")).json()[
        "id"
    ]
    done = await stack.wait_status(nid, "failed")
    assert [a["outcome"] for a in done["attempts"]] == ["permanent_error"]
    assert done["last_error_code"] == "sandbox_permanent"

    items = await _dlq_items(stack, 1)
    assert items[0]["notification_id"] == nid
    assert items[0]["reason"] == "permanent_error"
    assert items[0]["last_provider"] == "sandbox-sms"
    assert items[0]["attempts"] == 1
    assert await stack.sandbox(nid) == []


async def test_exhausted_retries_end_in_the_dead_letter_store(stack: Stack) -> None:
    await stack.set_sandbox("sandbox-email", "transient")
    nid = (
        await stack.send(
            channel="email", to="bob@example.com", subject="s", category="transactional", body="x"
        )
    ).json()["id"]
    done = await stack.wait_status(nid, "dead_lettered")
    assert len(done["attempts"]) == 4  # max_attempts of the test policy
    items = await _dlq_items(stack, 1)
    assert items[0]["reason"] == "exhausted"
    assert items[0]["attempts"] == 4
    assert items[0]["last_error"]
    assert (await stack.client.get("/v1/dlq", params={"reason": "permanent_error"})).json()[
        "items"
    ] == []


async def test_expired_message_is_never_sent(settings_for) -> None:

    async with running_stack(settings_for(), workers=0) as stack:
        nid = (
            await stack.send(
                channel="sms", to=SMS_TO, category="otp", body="code 123456", expires_in_s=1
            )
        ).json()["id"]
        await asyncio.sleep(1.5)
        await stack.start_worker()
        done = await stack.wait_status(nid, "expired")
        assert done["attempts"] == []
        assert await stack.sandbox(nid) == []
        items = await _dlq_items(stack, 1)
        assert items[0]["reason"] == "expired"


async def _dlq_items(stack: Stack, count: int) -> list[dict]:

    deadline = time.monotonic() + 15
    while True:
        body = (await stack.client.get("/v1/dlq")).json()
        if len(body["items"]) >= count or time.monotonic() > deadline:
            return body["items"]
        await asyncio.sleep(0.1)


async def test_outcome_events_are_published_for_subscribers(stack: Stack) -> None:

    connection = await aio_pika.connect(stack.settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        events = await channel.declare_queue(exclusive=True)
        await events.bind("herald.events", routing_key="#")
        nid = (
            await stack.send(channel="sms", to=SMS_TO, category="transactional", body="x")
        ).json()["id"]
        await stack.wait_status(nid, "sent")
        message = await events.get(timeout=5, fail=True)
        assert message is not None
        event = orjson.loads(message.body)
        assert message.routing_key == "sent.sms"
        assert message.content_type == "application/json"
        assert (
            event["event"] == "sent" and event["id"] == nid and event["provider"] == "sandbox-sms"
        )


async def test_a_poison_message_is_dead_lettered_after_its_crash_retries(stack: Stack) -> None:
    """A delivery that crashes every time (a sandbox behaviour no code expects) is tried
    HERALD_CRASH_RETRIES more times, then dead-lettered as ``crashed`` with the exception
    type, instead of looping to the queue's delivery limit."""

    await stack.redis.hset(names.sandbox_config_key(), "sandbox-push", b'{"unexpected": 1}')
    nid = (await stack.send(channel="push", to="tok-1", category="transactional", body="x")).json()[
        "id"
    ]
    done = await stack.wait_status(nid, "dead_lettered", timeout=30)
    assert done["last_error_code"] == "TypeError"
    [item] = await _dlq_items(stack, 1)
    assert item["notification_id"] == nid and item["reason"] == "crashed"
    assert await stack.sandbox(nid) == []
