"""Storage on SQLite and PostgreSQL: migrations, UTC timestamps, the constraints we rely on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic import command
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from dlq.ingester import DeadLetterIngester
from herald.domain import Category, Channel, Envelope, Priority
from herald.storage.db import SessionFactory, make_engine, make_session_factory
from herald.storage.migrate import alembic_config, downgrade, upgrade
from herald.storage.models import DeadLetter, IdempotencyKey, Notification
from tests.conftest import in_thread

pytestmark = pytest.mark.integration


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[tuple[AsyncEngine, SessionFactory]]:
    engine = make_engine(database_url)
    yield engine, make_session_factory(engine)
    await engine.dispose()


def notification_row(nid: str, **extra: object) -> dict[str, object]:
    now = datetime.now(UTC)
    return {
        "id": nid,
        "channel": "sms",
        "to": "+447911123456",
        "category": "transactional",
        "priority": "normal",
        "status": "accepted",
        "generation": 0,
        "attempt_count": 0,
        "created_at": now,
        "updated_at": now,
        **extra,
    }


def test_migrations_go_down_and_up_and_match_the_models(database_url: str) -> None:
    in_thread(downgrade, database_url, "base")
    in_thread(upgrade, database_url)
    # Fails if a model changed without a migration.
    in_thread(command.check, alembic_config(database_url))


async def test_timestamps_come_back_in_utc(db: tuple[AsyncEngine, SessionFactory]) -> None:
    _, sessions = db
    india = timezone(timedelta(hours=5, minutes=30))
    expires = datetime(2030, 1, 1, 12, 0, tzinfo=india)
    async with sessions.begin() as session:
        await session.execute(
            insert(Notification).values(**notification_row("n1", expires_at=expires))
        )
    async with sessions() as session:
        stored = (await session.execute(select(Notification.expires_at))).scalar_one()
    assert stored == expires and stored.tzinfo is not None
    assert stored.utcoffset() == timedelta(0)
    assert stored.hour == 6 and stored.minute == 30


async def test_one_idempotency_key_per_caller(db: tuple[AsyncEngine, SessionFactory]) -> None:
    _, sessions = db
    row = {
        "api_key_id": "k1",
        "key": "abc",
        "request_hash": "h",
        "notification_id": "n1",
        "created_at": datetime.now(UTC),
    }
    async with sessions.begin() as session:
        await session.execute(insert(IdempotencyKey).values(**row))
    with pytest.raises(IntegrityError):
        async with sessions.begin() as session:
            await session.execute(insert(IdempotencyKey).values(**row))
    async with sessions.begin() as session:  # another caller may use the same key
        await session.execute(insert(IdempotencyKey).values(**{**row, "api_key_id": "k2"}))


async def test_dead_letter_ingest_is_idempotent_and_redacts_otp_bodies(
    db: tuple[AsyncEngine, SessionFactory],
) -> None:
    _, sessions = db
    async with sessions.begin() as session:
        await session.execute(
            insert(Notification).values(**notification_row("n-otp", status="sending"))
        )
    envelope = Envelope(
        id="n-otp",
        channel=Channel.SMS,
        to="+447911123456",
        category=Category.OTP,
        priority=Priority.HIGH,
        body="Your code is 482913",
    )
    ingester = DeadLetterIngester(None, sessions)  # type: ignore[arg-type]
    headers = {
        "x-herald-reason": "exhausted",
        "x-herald-error": "vendor down",
        "x-herald-error-code": "503",
        "x-herald-provider": "twilio",
        "x-herald-attempts": 4,
    }
    await ingester.store(envelope, headers)
    await ingester.store(envelope, headers)  # a redelivered copy
    async with sessions() as session:
        rows = (await session.execute(select(DeadLetter))).scalars().all()
        assert (
            await session.execute(select(func.count()).select_from(DeadLetter))
        ).scalar_one() == 1
    [row] = rows
    assert row.reason == "exhausted" and row.last_provider == "twilio" and row.attempts == 4
    assert "482913" not in str(row.payload)
    assert row.payload["body"] == "[redacted]"
