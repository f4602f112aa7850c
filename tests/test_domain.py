"""Unit tests for the shared envelope, statuses (DESIGN §3) and time-ordered ids."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from herald.domain import (
    TERMINAL_STATUSES,
    Category,
    Channel,
    Envelope,
    Priority,
    Status,
    default_priority,
)
from herald.ids import new_id

EXPIRES = datetime(2026, 5, 4, 3, 2, 1, 123456, tzinfo=UTC)


def full_envelope() -> Envelope:
    return Envelope(
        id=new_id(),
        channel=Channel.EMAIL,
        to="alice@example.com",
        category=Category.TRANSACTIONAL,
        priority=Priority.NORMAL,
        body="Your receipt: 12,50 €",
        subject="Receipt #42",
        template=None,
        data={"order": {"id": 42, "items": ["a", "b"]}, "paid": True},
        metadata={"tenant": "shop-1", "trace": "abc"},
        expires_at=EXPIRES,
        caller="billing",
        generation=3,
        provider_override="sandbox-email",
    )


# Envelope -----------------------------------------------------------------------------


def test_round_trip_keeps_every_field() -> None:
    original = full_envelope()
    restored = Envelope.from_bytes(original.to_bytes())
    assert restored == original
    assert restored.channel is Channel.EMAIL
    assert restored.category is Category.TRANSACTIONAL
    assert restored.priority is Priority.NORMAL
    assert restored.generation == 3
    assert restored.data == {"order": {"id": 42, "items": ["a", "b"]}, "paid": True}
    assert restored.metadata == {"tenant": "shop-1", "trace": "abc"}


def test_round_trip_keeps_expires_at_timezone_aware() -> None:
    restored = Envelope.from_bytes(full_envelope().to_bytes())
    assert restored.expires_at == EXPIRES
    assert restored.expires_at is not None
    assert restored.expires_at.utcoffset() == timedelta(0)


def test_round_trip_keeps_a_non_utc_offset_as_the_same_instant() -> None:
    india = timezone(timedelta(hours=5, minutes=30))
    env = full_envelope()
    env.expires_at = datetime(2026, 5, 4, 8, 32, 1, tzinfo=india)
    restored = Envelope.from_bytes(env.to_bytes())
    assert restored.expires_at == datetime(2026, 5, 4, 3, 2, 1, tzinfo=UTC)


def test_minimal_envelope_round_trips_with_defaults() -> None:
    env = Envelope(
        id="n-1", channel=Channel.SMS, to="+447911123456", category=Category.OTP,
        priority=Priority.HIGH,
    )  # fmt: skip
    restored = Envelope.from_bytes(env.to_bytes())
    assert restored == env
    assert restored.expires_at is None
    assert restored.data == {}
    assert restored.metadata == {}
    assert restored.generation == 0


def test_wire_format_is_json_with_plain_enum_values() -> None:
    wire = orjson.loads(full_envelope().to_bytes())
    assert wire["channel"] == "email"
    assert wire["priority"] == "normal"
    assert wire["category"] == "transactional"
    assert datetime.fromisoformat(wire["expires_at"]) == EXPIRES


def test_from_bytes_accepts_messages_without_optional_fields() -> None:
    """A message published by an older producer (no generation, data or metadata keys)."""
    raw = orjson.dumps(
        {"id": "n-2", "channel": "push", "to": "tok", "category": "marketing", "priority": "low"}
    )
    env = Envelope.from_bytes(raw)
    assert env.generation == 0
    assert env.data == {}
    assert env.metadata == {}
    assert env.expires_at is None


@pytest.mark.parametrize(
    ("channel", "priority", "key"),
    [
        (Channel.SMS, Priority.HIGH, "sms.high"),
        (Channel.EMAIL, Priority.NORMAL, "email.normal"),
        (Channel.PUSH, Priority.LOW, "push.low"),
    ],
)
def test_routing_key_is_channel_dot_priority(
    channel: Channel, priority: Priority, key: str
) -> None:
    env = Envelope(id="n", channel=channel, to="x", category=Category.OTP, priority=priority)
    assert env.routing_key == key


def test_is_expired_from_the_expiry_instant_on() -> None:
    env = full_envelope()
    assert not env.is_expired(EXPIRES - timedelta(microseconds=1))
    assert env.is_expired(EXPIRES)
    assert env.is_expired(EXPIRES + timedelta(days=1))


def test_envelope_without_expiry_never_expires() -> None:
    env = full_envelope()
    env.expires_at = None
    assert not env.is_expired(datetime(9999, 1, 1, tzinfo=UTC))


def test_default_priority_puts_otp_first_and_marketing_last() -> None:
    assert default_priority(Category.OTP) is Priority.HIGH
    assert default_priority(Category.TRANSACTIONAL) is Priority.NORMAL
    assert default_priority(Category.MARKETING) is Priority.LOW


# Status -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "terminal"),
    [
        (Status.ACCEPTED, False),
        (Status.QUEUED, False),
        (Status.SENDING, False),
        (Status.RETRY_SCHEDULED, False),
        (Status.SENT, True),
        (Status.DELIVERED, True),
        (Status.UNDELIVERED, True),
        (Status.FAILED, True),
        (Status.DEAD_LETTERED, True),
        (Status.EXPIRED, True),
    ],
)
def test_is_terminal(status: Status, terminal: bool) -> None:
    assert status.is_terminal is terminal


def test_every_status_is_classified_and_names_match_the_design() -> None:
    assert {s.value for s in Status} == {
        "accepted", "queued", "sending", "retry_scheduled", "sent", "delivered",
        "undelivered", "failed", "dead_lettered", "expired",
    }  # fmt: skip
    assert set(Status) >= TERMINAL_STATUSES


# Ids ----------------------------------------------------------------------------------


def test_new_id_is_a_uuid_version_7_string() -> None:
    value = new_id()
    parsed = uuid.UUID(value)
    assert str(parsed) == value
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122


def test_new_id_carries_the_creation_time_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    value = new_id()
    after = time.time_ns() // 1_000_000
    assert before <= uuid.UUID(value).int >> 80 <= after


def test_new_ids_are_unique() -> None:
    ids = [new_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)


def test_ids_sort_in_creation_order() -> None:
    ids = []
    for _ in range(20):
        ids.append(new_id())
        time.sleep(0.002)
    assert sorted(ids) == ids
