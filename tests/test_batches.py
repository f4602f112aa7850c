"""Batched delivery lanes: what waits is delivered together, each message once, and a bad
message or a failing call in a batch never costs the others their delivery."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import yaml
from sqlalchemy import func, select

from config.settings import DEFAULT_ROUTING_FILE
from herald import names
from herald.domain import Category, Channel, Envelope, Priority, utcnow
from herald.storage.models import Attempt
from router.rules import parse_rules
from tests.support.stack import Stack, queue_depths, running_stack
from tests.support.waiting import wait_until
from workers.batch_plan import choose_fast

SMS = {"channel": "sms", "to": "+447400123456", "category": "transactional", "body": "hi"}
RULES = parse_rules(
    {
        "providers": {
            "a": {"type": "sandbox", "channel": "sms"},
            "b": {"type": "sandbox", "channel": "sms"},
        },
        "rules": [{"name": "sms", "match": {"channel": "sms"}, "tiers": [["a"], ["b"]]}],
    }
)


def envelope(**changes: Any) -> Envelope:
    values: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "channel": Channel.SMS,
        "to": "+447400123456",
        "category": Category.TRANSACTIONAL,
        "priority": Priority.NORMAL,
        "body": "hello",
    }
    values.update(changes)
    return Envelope(**values)


# -- which messages the batch takes: pure, no servers ---------------------------------


def test_a_plain_message_goes_to_its_first_choice_with_the_rest_as_failover() -> None:
    chosen = choose_fast(envelope(), utcnow(), RULES, {}, lambda _: True)
    assert chosen is not None
    assert chosen.provider == "a"
    assert [c.provider for c in chosen.remaining] == ["b"]


def test_a_provider_with_an_open_breaker_is_skipped_in_the_plan() -> None:
    chosen = choose_fast(envelope(), utcnow(), RULES, {"a": False}, lambda _: True)
    assert chosen is not None and chosen.provider == "b" and chosen.remaining == ()


@pytest.mark.parametrize(
    "why",
    ["otp", "expired", "first_choice_not_usable", "no_route", "nothing_available"],
)
def test_the_unusual_cases_go_one_by_one(why: str) -> None:
    now = utcnow()
    message = envelope()
    usable = lambda _: True  # noqa: E731
    available: dict[str, bool] = {}
    if why == "otp":
        message = envelope(otp_id="otp-1", category=Category.OTP)
    elif why == "expired":
        message = envelope(expires_at=now - timedelta(seconds=1))
    elif why == "first_choice_not_usable":
        usable = lambda name: name != "a"  # noqa: E731 - half-open, throttled, or not built
    elif why == "no_route":
        message = envelope(channel=Channel.EMAIL, to="a@example.com")
    else:
        available = {"a": False, "b": False}
    assert choose_fast(message, now, RULES, available, usable) is None


# -- against the real servers ----------------------------------------------------------

COUNT = 120


async def _backlog(stack: Stack, count: int) -> list[str]:
    """``count`` notifications accepted and waiting on the queue, no worker running."""
    gate = asyncio.Semaphore(16)

    async def one() -> str:
        async with gate:
            response = await stack.send(**SMS)
            assert response.status_code == 202, response.text
            return str(response.json()["id"])

    ids = list(await asyncio.gather(*(one() for _ in range(count))))

    async def queued() -> bool:
        depths = await queue_depths(stack.settings)
        return depths.get(names.work_queue("sms", "normal"), 0) >= count

    await wait_until(queued, 30, f"{count} messages on the sms queue")
    return ids


async def _distinct(stack: Stack, column: Any, ids: list[str]) -> int:
    async with stack.sessions() as session:
        return int(
            await session.scalar(
                select(func.count(func.distinct(column))).where(Attempt.notification_id.in_(ids))
            )
            or 0
        )


@pytest.mark.integration
async def test_a_backlog_is_started_and_settled_in_batches_each_message_once(
    settings_for: Any,
) -> None:
    async with running_stack(settings_for(), workers=0) as stack:
        ids = await _backlog(stack, COUNT)
        await stack.start_worker()
        statuses = await stack.wait_all_terminal(ids, timeout=120)
        assert set(statuses.values()) == {"sent"}
        assert set(map(tuple, (await stack.attempt_outcomes(ids)).values())) == {("sent",)}
        assert set((await stack.sandbox_copies(ids)).values()) == {1}
        # A batch writes its attempts with one clock reading and settles them with one:
        # far fewer distinct times than messages means far fewer transactions.
        begins = await _distinct(stack, Attempt.started_at, ids)
        settles = await _distinct(stack, Attempt.finished_at, ids)
        assert begins <= COUNT // 4, begins
        assert settles <= COUNT // 4, settles


@pytest.mark.integration
async def test_a_bad_message_in_a_batch_never_costs_the_others_their_delivery(
    settings_for: Any,
) -> None:
    async with running_stack(settings_for(), workers=0) as stack:
        ids = await _backlog(stack, 40)
        # Into the same queue, behind the backlog: a message for a notification nobody
        # accepted, and one that is not an envelope at all.
        stranger = envelope()
        connection = await aio_pika.connect(stack.settings.amqp_url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(names.EXCHANGE, ensure=False)
            for body in (stranger.to_bytes(), b"not an envelope"):
                await exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=stranger.routing_key,
                )
        ids += await _backlog(stack, 40)
        await stack.start_worker()
        statuses = await stack.wait_all_terminal(ids, timeout=120)
        assert set(statuses.values()) == {"sent"}
        assert set((await stack.sandbox_copies(ids)).values()) == {1}

        async def both_dead_lettered() -> bool:
            return len(await stack.dead_letters()) == 2

        await wait_until(both_dead_lettered, 30, "two dead letters")
        reasons = sorted(d.reason for d in await stack.dead_letters())
        assert reasons == ["unreadable", "unreadable"]
        assert await stack.sandbox_copies([stranger.id]) == {stranger.id: 0}


@pytest.mark.integration
async def test_a_failing_first_choice_inside_a_batch_fails_over_for_each_message(
    settings_for: Any, tmp_path: Path
) -> None:
    """Every message of the batch gets its failover: the first vendor's transient error is
    recorded as an attempt, the second vendor sends it, once."""
    doc = yaml.safe_load(DEFAULT_ROUTING_FILE.read_text())
    doc["providers"]["sandbox-sms-b"] = {"type": "sandbox", "channel": "sms"}
    doc["rules"][0]["tiers"] = [["sandbox-sms"], ["sandbox-sms-b"]]
    routing = tmp_path / "routing.yaml"
    routing.write_text(yaml.safe_dump(doc))
    # A breaker that never trips here: every message must meet the failing vendor first.
    values = settings_for(routing_file=str(routing), breaker_min_calls=10_000)
    async with running_stack(values, workers=0) as stack:
        await stack.set_sandbox("sandbox-sms", "transient")
        ids = await _backlog(stack, 30)
        await stack.start_worker()
        statuses = await stack.wait_all_terminal(ids, timeout=120)
        outcomes = await stack.attempt_outcomes(ids)
        assert set(statuses.values()) == {"sent"}, statuses
        assert {tuple(o) for o in outcomes.values()} == {("transient_error", "sent")}
        assert set((await stack.sandbox_copies(ids)).values()) == {1}
