"""The send API as a caller sees it: auth, validation, idempotency, durable accept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from herald.domain import utcnow
from herald.storage.models import IdempotencyKey, Notification
from producer.auth import KeyStore
from tests.support.stack import Stack, free_port, running_stack, stack_settings
from tests.support.tcpproxy import TcpProxy

pytestmark = pytest.mark.integration

SMS = {"channel": "sms", "to": "+447911123456", "category": "transactional", "body": "Hi"}


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Stack]:
    """The API alone: nothing consumes, so anything queued stays visible."""
    async with running_stack(stack_settings(database_url), workers=0) as stack:
        yield stack


def assert_problem(response: httpx.Response, status: int, field: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["title"]
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body


async def test_requires_a_valid_key_with_the_send_scope(api: Stack) -> None:
    anonymous = await api.client.post("/v1/notifications", json=SMS, headers={"Authorization": ""})
    assert_problem(anonymous, 401)
    assert anonymous.headers["www-authenticate"] == "Bearer"
    wrong = await api.send(**SMS, headers={"Authorization": "Bearer nope"})
    assert_problem(wrong, 401)

    reader = await KeyStore(api.sessions).create("console-reader", ["dlq:read"])
    forbidden = await api.send(**SMS, headers={"Authorization": f"Bearer {reader}"})
    assert_problem(forbidden, 403)
    assert "send" in forbidden.json()["detail"]
    assert await api.nothing_stored_or_queued()


BAD_INPUTS: list[tuple[str, dict[str, Any], int, str]] = [
    ("invalid number", {**SMS, "to": "+44123"}, 422, "to"),
    ("no country code", {**SMS, "to": "07911123456"}, 422, "to"),
    ("premium rate", {**SMS, "to": "+449098790123"}, 422, "to"),
    ("landline for sms", {**SMS, "to": "+442079460000"}, 422, "to"),
    (
        "bad e-mail",
        {
            "channel": "email",
            "to": "not-an-address",
            "subject": "s",
            "category": "transactional",
            "body": "b",
        },
        422,
        "to",
    ),
    (
        "CR/LF in subject",
        {
            "channel": "email",
            "to": "a@example.com",
            "subject": "hi\r\nBcc: x@evil.test",
            "category": "transactional",
            "body": "b",
        },
        422,
        "subject",
    ),
    (
        "CR/LF in address",
        {
            "channel": "email",
            "to": "a@example.com\r\nBcc: x@evil.test",
            "subject": "s",
            "category": "transactional",
            "body": "b",
        },
        422,
        "to",
    ),
    (
        "e-mail without subject",
        {"channel": "email", "to": "a@example.com", "category": "transactional", "body": "b"},
        422,
        "subject",
    ),
    ("missing body", {k: v for k, v in SMS.items() if k != "body"}, 422, "body"),
    ("unknown channel", {**SMS, "channel": "fax"}, 422, "channel"),
    ("unknown category", {**SMS, "category": "spam"}, 422, "category"),
    ("unknown field", {**SMS, "colour": "red"}, 422, "colour"),
    ("missing to", {k: v for k, v in SMS.items() if k != "to"}, 422, "to"),
    ("body too long", {**SMS, "body": "x" * 20_000}, 413, "body"),
    ("metadata too large", {**SMS, "metadata": {"blob": "x" * 5_000}}, 413, "metadata"),
    (
        "bad push token",
        {"channel": "push", "to": "bad token!", "category": "transactional", "body": "b"},
        422,
        "to",
    ),
    ("expiry out of range", {**SMS, "expires_in_s": 0}, 422, "expires_in_s"),
    ("naive send_at", {**SMS, "send_at": "2030-01-01T00:00:00"}, 422, "send_at"),
]


@pytest.mark.parametrize(
    ("case", "payload", "status", "field"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS]
)
async def test_bad_input_is_refused_naming_the_field_and_nothing_is_queued(
    api: Stack, case: str, payload: dict[str, Any], status: int, field: str
) -> None:
    assert_problem(await api.send(**payload), status, field)
    assert await api.nothing_stored_or_queued()


async def test_oversized_and_malformed_requests(api: Stack) -> None:
    huge = await api.client.post(
        "/v1/notifications",
        content=b'{"body": "' + b"x" * 70_000 + b'"}',
        headers={"content-type": "application/json"},
    )
    assert_problem(huge, 413)
    broken = await api.client.post(
        "/v1/notifications", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_problem(broken, 400, "body")
    assert "line 1 column 2" in broken.json()["errors"][0]["message"]
    assert await api.nothing_stored_or_queued()


async def test_idempotent_replay_returns_the_original_and_queues_nothing_more(api: Stack) -> None:
    headers = {"Idempotency-Key": "order-42-receipt"}
    first = await api.send(**SMS, headers=headers)
    again = await api.send(**SMS, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert await api.count(Notification) == 1

    different = await api.send(**{**SMS, "body": "another text"}, headers=headers)
    assert_problem(different, 422, "Idempotency-Key")
    assert await api.count(Notification) == 1

    too_long = await api.send(**SMS, headers={"Idempotency-Key": "k" * 256})
    assert_problem(too_long, 400, "Idempotency-Key")


async def test_idempotency_keys_are_scoped_per_caller(api: Stack) -> None:
    other = await KeyStore(api.sessions).create("billing", ["send"])
    headers = {"Idempotency-Key": "same-key"}
    mine = await api.send(**SMS, headers=headers)
    theirs = await api.send(**SMS, headers={**headers, "Authorization": f"Bearer {other}"})
    assert mine.json()["id"] != theirs.json()["id"]
    assert await api.count(Notification) == 2
    # …and one caller cannot read the other's notification.
    peek = await api.client.get(
        f"/v1/notifications/{mine.json()['id']}", headers={"Authorization": f"Bearer {other}"}
    )
    assert_problem(peek, 404)


async def test_twenty_concurrent_requests_with_one_key_queue_one_message(api: Stack) -> None:
    headers = {"Idempotency-Key": "burst-1"}
    responses = await asyncio.gather(*(api.send(**SMS, headers=dict(headers)) for _ in range(20)))
    accepted = [r for r in responses if r.status_code == 202]
    in_flight = [r for r in responses if r.status_code == 409]
    assert len(accepted) + len(in_flight) == 20
    assert accepted and len({r.json()["id"] for r in accepted}) == 1
    for r in in_flight:
        assert_problem(r, 409, "Idempotency-Key")
        assert r.headers["retry-after"] == "1"
    assert await api.count(Notification) == 1
    assert await api.count(IdempotencyKey) == 1


async def test_idempotency_holds_without_redis(database_url: str) -> None:
    values = stack_settings(database_url, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with running_stack(values, workers=0) as api:
        headers = {"Idempotency-Key": "redis-is-down"}
        responses = await asyncio.gather(
            *(api.send(**SMS, headers=dict(headers)) for _ in range(10))
        )
        assert {r.status_code for r in responses} == {202}
        assert len({r.json()["id"] for r in responses}) == 1
        assert await api.count(Notification) == 1


async def test_get_notification_shows_status_and_attempts(api: Stack) -> None:
    sent = await api.send(**SMS)
    body = await api.notification(sent.json()["id"])
    assert body["status"] in ("accepted", "queued")
    assert body["channel"] == "sms" and body["category"] == "transactional"
    assert body["priority"] == "normal"
    assert body["attempts"] == []
    assert_problem(await api.client.get("/v1/notifications/does-not-exist"), 404)


async def test_health_readiness_and_metrics(api: Stack) -> None:
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
    ready = await api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "redis": "ok"}
    await api.send(**SMS)
    metrics = (await api.client.get("/metrics")).text
    assert 'herald_accepted_total{category="transactional",channel="sms"}' in metrics
    assert "herald_accept_seconds_bucket" in metrics


async def test_database_down_answers_503_never_202(postgres_schema: str) -> None:
    from tests.conftest import _truncate, in_thread

    in_thread(asyncio.run, _truncate(postgres_schema))
    proxy = await TcpProxy("127.0.0.1", 5432).start()
    url = postgres_schema.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    try:
        async with running_stack(stack_settings(url), workers=0) as api:
            assert (await api.send(**SMS)).status_code == 202
            proxy.cut()
            down = await api.send(**SMS)
            assert_problem(down, 503)
            assert down.headers["retry-after"]
            ready = await api.client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["database"] != "ok"
            proxy.heal()
            assert (await api.send(**SMS)).status_code == 202
            assert await api.count(Notification) == 2
    finally:
        await proxy.stop()


async def test_send_at_within_the_clock_skew_is_sent_now(api: Stack) -> None:
    """Up to 5 minutes in the past (a caller's clock behind ours) means now; further back
    is a 422 (tests/test_hostile_input.py), never a silent send at once."""
    when = (utcnow() - timedelta(minutes=2)).isoformat()
    response = await api.send(**SMS, send_at=when)
    assert response.status_code == 202, response.text
    body = await api.notification(response.json()["id"])
    assert body["send_at"] is None and body["expires_at"] is None
