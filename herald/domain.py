"""The message envelope and the enums every part of Herald shares.

The envelope is what travels on RabbitMQ: it carries everything a worker needs to
deliver, so the hot path never has to read the request back from the database.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

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
    #: Not a message Herald can act on (not an envelope, or for no notification we hold):
    #: the row keeps the raw bytes for on-call, and there is nothing to replay.
    UNREADABLE = "unreadable"
    #: Our code raised on it (a poison message); the error names the exception type.
    CRASHED = "crashed"
    #: Our backing services stayed down for longer than the deferral bound.
    INFRASTRUCTURE = "infrastructure"


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
    #: An SMS destination's region (ISO 3166 alpha-2, as ``phonenumbers`` names it),
    #: found when the API parsed the number, so routing need not parse it again. Absent
    #: in envelopes from before it existed: routing then parses ``to`` itself.
    country: str | None = None

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
                "country": self.country,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> Envelope:
        """Parse a message off the wire; anything that is not an envelope → EnvelopeError."""
        try:
            decoded = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise EnvelopeError("body", f"not JSON ({exc})") from None
        return cls.from_dict(decoded)

    @classmethod
    def from_dict(cls, d: Any) -> Envelope:
        """Build one from its JSON form, checking every field's type (strict: a poison
        message fails here, at once, instead of deep inside a delivery)."""
        if not isinstance(d, dict):
            raise EnvelopeError("body", f"a JSON {type(d).__name__}, not an object")
        generation = d.get("generation", 0)
        if type(generation) is not int or generation < 0:
            raise EnvelopeError("generation", "not a whole number ≥ 0")
        notification_id = _text(d, "id", required=True)
        assert notification_id is not None
        if len(notification_id) > MAX_ID_CHARS:
            raise EnvelopeError("id", f"longer than {MAX_ID_CHARS} characters")
        return cls(
            id=notification_id,
            channel=_member(d, "channel", Channel),
            to=_text(d, "to", required=True) or "",
            category=_member(d, "category", Category),
            priority=_member(d, "priority", Priority),
            body=_text(d, "body"),
            subject=_text(d, "subject"),
            template=_text(d, "template"),
            data=_object(d, "data"),
            metadata=_object(d, "metadata"),
            expires_at=_aware_time(d, "expires_at"),
            caller=_text(d, "caller"),
            generation=generation,
            provider_override=_text(d, "provider_override"),
            otp_id=_text(d, "otp_id"),
            country=_country(d),
        )


_E = TypeVar("_E", bound=enum.StrEnum)

#: Notification ids are UUIDs (36 characters); the database columns hold no more.
MAX_ID_CHARS = 36


class EnvelopeError(ValueError):
    """A message that is not a valid envelope; ``field`` names what failed to parse."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def _text(d: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = d.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise EnvelopeError(name, "missing" if value is None else "not a non-empty string")
    return value


def _member(d: dict[str, Any], name: str, kind: type[_E]) -> _E:
    value = d.get(name)
    if value is None:
        raise EnvelopeError(name, "missing")
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise EnvelopeError(name, f"{str(value)[:40]!r} is not one of {allowed}") from None


def _country(d: dict[str, Any]) -> str | None:
    value = _text(d, "country")
    if value is not None and not (len(value) <= 3 and value.isascii() and value.isalnum()):
        raise EnvelopeError("country", "not a region code")
    return value


def _object(d: dict[str, Any], name: str) -> dict[str, Any]:
    value = d.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise EnvelopeError(name, "not a JSON object")
    return value


def _aware_time(d: dict[str, Any], name: str) -> datetime | None:
    value = d.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise EnvelopeError(name, "not an ISO 8601 time string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise EnvelopeError(name, "not an ISO 8601 time string") from None
    if parsed.tzinfo is None:
        raise EnvelopeError(name, "has no timezone")
    return parsed
