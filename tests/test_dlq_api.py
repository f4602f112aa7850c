"""``GET /v1/dlq``: filters and cursor pagination over the stored dead letters."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, update

from dlq.ingester import DeadLetterIngester
from herald.domain import Category, Channel, Envelope, Priority
from herald.signing import CursorCodec
from herald.storage.models import DeadLetter, Notification
from producer.auth import KeyStore
from tests.support.stack import Stack, running_stack, stack_settings

pytestmark = pytest.mark.integration


async def store(
    stack: Stack, nid: str, channel: Channel, reason: str, provider: str, at: datetime
) -> None:
    to = {"sms": "+447400123456", "email": "a@example.com", "push": "tok"}[channel.value]
    envelope = Envelope(
        id=nid,
        channel=channel,
        to=to,
        category=Category.TRANSACTIONAL,
        priority=Priority.NORMAL,
        body="b",
        caller="billing",
    )
    headers = {
        "x-herald-reason": reason,
        "x-herald-error": "boom",
        "x-herald-error-code": f"{provider}-err",
        "x-herald-provider": provider,
        "x-herald-attempts": 3,
    }
    async with stack.sessions.begin() as session:  # the ingester stores known ones only
        await session.execute(
            insert(Notification).values(
                id=nid,
                channel=channel.value,
                to=to,
                category="transactional",
                priority="normal",
                status="failed",
                created_at=at,
                updated_at=at,
            )
        )
    assert await DeadLetterIngester(None, stack.sessions).store(envelope, headers)  # type: ignore[arg-type]
    async with stack.sessions.begin() as session:
        await session.execute(
            update(DeadLetter).where(DeadLetter.notification_id == nid).values(dead_lettered_at=at)
        )


@pytest.fixture
async def dlq(database_url: str):  # type: ignore[no-untyped-def]
    async with running_stack(stack_settings(database_url), workers=0) as stack:
        now = datetime.now(UTC)
        for i in range(12):
            channel = [Channel.SMS, Channel.EMAIL, Channel.PUSH][i % 3]
            reason = "exhausted" if i % 2 else "permanent_error"
            provider = "twilio" if i < 6 else "sns"
            await store(stack, f"n{i:02}", channel, reason, provider, now - timedelta(minutes=i))
        yield stack


async def ids(stack: Stack, **params: object) -> list[str]:
    response = await stack.client.get("/v1/dlq", params=params)
    assert response.status_code == 200, response.text
    return [item["notification_id"] for item in response.json()["items"]]


async def test_lists_newest_first_with_the_contract_fields(dlq: Stack) -> None:
    body = (await dlq.client.get("/v1/dlq")).json()
    assert [i["notification_id"] for i in body["items"]] == [f"n{i:02}" for i in range(12)]
    first = body["items"][0]
    for field in (
        "id",
        "notification_id",
        "channel",
        "category",
        "reason",
        "last_error",
        "last_provider",
        "attempts",
        "dead_lettered_at",
    ):
        assert field in first
    assert body["next_cursor"] is None


async def test_filters(dlq: Stack) -> None:
    assert await ids(dlq, channel="sms") == ["n00", "n03", "n06", "n09"]
    assert await ids(dlq, provider="sns", reason="exhausted") == ["n07", "n09", "n11"]
    assert await ids(dlq, error_code="twilio-err", channel="email") == ["n01", "n04"]
    assert len(await ids(dlq, caller="billing")) == 12
    assert await ids(dlq, caller="someone-else") == []
    since = (datetime.now(UTC) - timedelta(minutes=2, seconds=30)).isoformat()
    assert await ids(dlq, since=since) == ["n00", "n01", "n02"]


async def test_cursor_pages_through_everything_once(dlq: Stack) -> None:
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params = {"limit": 5, **({"cursor": cursor} if cursor else {})}
        body = (await dlq.client.get("/v1/dlq", params=params)).json()
        seen += [i["notification_id"] for i in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"n{i:02}" for i in range(12)]


async def test_bad_filters_and_scopes(dlq: Stack) -> None:
    bad = await dlq.client.get("/v1/dlq", params={"reason": "bored"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "reason"
    bad = await dlq.client.get("/v1/dlq", params={"cursor": "!!!"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "cursor"
    bad = await dlq.client.get("/v1/dlq", params={"since": "2026-01-01T00:00:00"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "since"
    sender = await KeyStore(dlq.sessions).create("sender-only", ["send"])
    forbidden = await dlq.client.get("/v1/dlq", headers={"Authorization": f"Bearer {sender}"})
    assert forbidden.status_code == 403


def unsigned_cursor(at: datetime, id_: str) -> str:
    """The cursor format before cursors were signed: base64 of ``time|id``."""
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{id_}".encode()).decode().rstrip("=")


async def test_a_crafted_or_tampered_cursor_is_a_422_naming_cursor(dlq: Stack) -> None:
    """The attack: skip to any position by crafting a cursor (or editing a real one, or
    bringing one made for another list or under another secret). All are refused, with
    no items in the answer."""
    first = (await dlq.client.get("/v1/dlq", params={"limit": 2})).json()
    real = first["next_cursor"]
    assert real is not None
    far_future = datetime(2100, 1, 1, tzinfo=UTC)
    tampered = real[:-1] + ("A" if real[-1] != "A" else "B")
    crafted = [
        unsigned_cursor(far_future, "z" * 36),
        unsigned_cursor(datetime(2026, 1, 1), "x"),  # well-formed, but no timezone
        tampered,
        CursorCodec(b"x" * 32).encode("dlq", far_future, "z" * 36),  # another secret
        CursorCodec.for_settings(dlq.settings).encode("audit", far_future, "z"),  # other list
        "A" * 4000,
    ]
    for cursor in crafted:
        response = await dlq.client.get("/v1/dlq", params={"cursor": cursor})
        assert response.status_code == 422, (cursor, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        body = response.json()
        assert body["errors"][0]["field"] == "cursor"
        assert "items" not in body
    following = await dlq.client.get("/v1/dlq", params={"limit": 2, "cursor": real})
    assert following.status_code == 200 and len(following.json()["items"]) == 2
