"""The message envelope and the enums every part of Herald shares.

The envelope is what travels on RabbitMQ: it carries everything a worker needs to
deliver, so the hot path never has to read the request back from the database.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson


class Channel(enum.StrEnum):
    SMS = "sms"
    EMAIL = "email"
    PUSH = "push"


class Priority(enum.StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class Category(enum.StrEnum):
    OTP = "otp"
    TRANSACTIONAL = "transactional"
    MARKETING = "marketing"


class Status(enum.StrEnum):
    ACCEPTED = "accepted"
    QUEUED = "queued"
    SENDING = "sending"
    RETRY_SCHEDULED = "retry_scheduled"
    SENT = "sent"
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"
    EXPIRED = "expired"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {
        Status.SENT,
        Status.DELIVERED,
        Status.UNDELIVERED,
        Status.FAILED,
        Status.DEAD_LETTERED,
        Status.EXPIRED,
    }
)
UNDELIVERED_STATUSES = frozenset({Status.FAILED, Status.DEAD_LETTERED, Status.EXPIRED})


class DeadLetterReason(enum.StrEnum):
    PERMANENT_ERROR = "permanent_error"
    EXHAUSTED = "exhausted"
    EXPIRED = "expired"
    NO_ROUTE = "no_route"


class AttemptOutcome(enum.StrEnum):
    SENDING = "sending"
    SENT = "sent"
    TRANSIENT_ERROR = "transient_error"
    PERMANENT_ERROR = "permanent_error"
    RECONCILED = "reconciled"
    UNKNOWN = "unknown"


def utcnow() -> datetime:
    return datetime.now(UTC)


def default_priority(category: Category) -> Priority:
    """OTPs jump the queue; marketing waits behind everything else."""
    return {
        Category.OTP: Priority.HIGH,
        Category.TRANSACTIONAL: Priority.NORMAL,
        Category.MARKETING: Priority.LOW,
    }[category]


@dataclass(slots=True)
class Envelope:
    """One notification as published to RabbitMQ.

    ``generation`` grows on every replay, so a replayed message gets a fresh attempt
    budget and a fresh idempotency claim under the same notification id.
    """

    id: str
    channel: Channel
    to: str
    category: Category
    priority: Priority
    body: str | None = None
    subject: str | None = None
    template: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    expires_at: datetime | None = None
    caller: str | None = None
    generation: int = 0
    provider_override: str | None = None
    #: An OTP's id: the worker renders the code into the body at send time.
    otp_id: str | None = None

    @property
    def routing_key(self) -> str:
        return f"{self.channel}.{self.priority}"

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "id": self.id,
                "channel": self.channel.value,
                "to": self.to,
                "category": self.category.value,
                "priority": self.priority.value,
                "body": self.body,
                "subject": self.subject,
                "template": self.template,
                "data": self.data,
                "metadata": self.metadata,
                "expires_at": self.expires_at.isoformat() if self.expires_at else None,
                "caller": self.caller,
                "generation": self.generation,
                "provider_override": self.provider_override,
                "otp_id": self.otp_id,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> Envelope:
        return cls.from_dict(orjson.loads(raw))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Envelope:
        expires = d.get("expires_at")
        return cls(
            id=d["id"],
            channel=Channel(d["channel"]),
            to=d["to"],
            category=Category(d["category"]),
            priority=Priority(d["priority"]),
            body=d.get("body"),
            subject=d.get("subject"),
            template=d.get("template"),
            data=d.get("data") or {},
            metadata=d.get("metadata") or {},
            expires_at=datetime.fromisoformat(expires) if expires else None,
            caller=d.get("caller"),
            generation=d.get("generation", 0),
            provider_override=d.get("provider_override"),
            otp_id=d.get("otp_id"),
        )
