"""Send-request validation: pure functions, each failure naming its field."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import email_validator
import orjson
import phonenumbers
from phonenumbers import PhoneNumberType
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict

from herald.domain import Category, Channel, Priority, default_priority
from producer.problems import FieldError
from providers.email_message import header_unsafe

SMS_CAPABLE = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE})
MAX_EXPIRES_IN_S = 7 * 24 * 3600
MAX_SCHEDULE_AHEAD = timedelta(days=30)
MAX_PUSH_TOKEN = 4096
IDEMPOTENCY_KEY_MAX = 255
#: A ``send_at`` up to this far in the past (a caller's clock running behind) means
#: "now"; further back is refused rather than silently sent at once.
SEND_AT_SKEW = timedelta(minutes=5)
#: What a database integer column holds (routing versions): a larger id is a 422.
INT32_MAX = 2**31 - 1

# JSON's types, not Python's coercions: ``true`` is not 1, ``"60"`` is not 60 and ``0``
# is not ``false`` (pydantic's lax mode takes all three). Floats take integers.
StrictInt = Annotated[int, Strict()]
StrictBool = Annotated[bool, Strict()]
StrictFloat = Annotated[float, Strict()]


def _iso_datetime(value: Any) -> Any:
    """An ISO 8601 string (or a datetime from Python code): not a Unix timestamp, which
    pydantic would also take, as a number or a string of digits."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 date-time string (e.g. 2026-01-01T09:00:00Z)")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("is not an ISO 8601 date-time (e.g. 2026-01-01T09:00:00Z)") from None


def _representable(value: datetime) -> datetime:
    """Year 1 at +14:00 parses, but has no UTC instant: every comparison would fail later."""
    if value.tzinfo is not None:
        try:
            value.astimezone(UTC)
        except OverflowError:
            raise ValueError("is outside the representable range of dates") from None
    return value


IsoDatetime = Annotated[datetime, BeforeValidator(_iso_datetime), AfterValidator(_representable)]


class SendRequest(BaseModel):
    """``POST /v1/notifications``. Unknown fields are rejected, not ignored."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    channel: Channel
    to: str = Field(min_length=1, max_length=4096)
    category: Category
    priority: Priority | None = None
    subject: str | None = Field(None, max_length=998)
    body: str | None = None
    template: str | None = Field(None, max_length=200)
    data: dict[str, Any] | None = None
    expires_in_s: StrictInt | None = Field(None, ge=1, le=MAX_EXPIRES_IN_S)
    send_at: IsoDatetime | None = None
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_chars: int
    max_metadata_bytes: int


@dataclass(frozen=True, slots=True)
class ValidSend:
    channel: Channel
    to: str
    category: Category
    priority: Priority
    subject: str | None
    body: str | None
    data: dict[str, Any]
    metadata: dict[str, Any]
    expires_at: datetime | None
    send_at: datetime | None
    #: Set for OTP messages: the worker renders the code; the request has no body.
    otp_id: str | None = None
    #: An SMS number's region, from the one parse of the number (limits, routing, the
    #: envelope all use it); None for other channels.
    country: str | None = None


def reject_control_characters(field: str, value: str) -> None:
    """A line break (CR, LF, NEL, U+2028, ...) or any control character in a value bound
    for a header is header injection, or a message the e-mail adapters cannot build."""
    why = header_unsafe(value)
    if why is not None:
        raise FieldError(field, why)


def normalize_phone(to: str, *, field: str = "to") -> str:
    """An SMS-capable, non-premium number in E.164 (``+447400123456``)."""
    return parse_phone(to, field=field)[0]


def parse_phone(to: str, *, field: str = "to") -> tuple[str, str | None]:
    """:func:`normalize_phone` and the number's region (``GB``), from one parse."""
    if not to.startswith("+"):
        raise FieldError(
            field, "must be an E.164 phone number starting with '+' and a country code"
        )
    try:
        number = phonenumbers.parse(to, None)
    except phonenumbers.NumberParseException as exc:
        raise FieldError(field, f"is not a phone number ({exc._msg})") from None
    # is_valid_number would look the region up itself; it is needed below as well.
    region = phonenumbers.region_code_for_number(number)
    if region is None or not phonenumbers.is_valid_number_for_region(number, region):
        raise FieldError(field, "is not a valid phone number")
    kind = phonenumbers.number_type(number)
    if kind == PhoneNumberType.PREMIUM_RATE:
        raise FieldError(field, "is a premium-rate number; SMS to it is refused")
    if kind not in SMS_CAPABLE:
        raise FieldError(field, "cannot receive SMS (not a mobile number)")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return e164, region


def normalize_email(to: str, *, field: str = "to") -> str:
    reject_control_characters(field, to)
    try:
        info = email_validator.validate_email(to, check_deliverability=False)
    except email_validator.EmailNotValidError as exc:
        raise FieldError(field, f"is not a valid e-mail address ({exc})") from None
    return info.normalized


def check_push_token(to: str, *, field: str = "to") -> str:
    if len(to) > MAX_PUSH_TOKEN or not all(
        c.isascii() and (c.isalnum() or c in ":_-.") for c in to
    ):
        raise FieldError(field, "is not a device token (letters, digits and ':_-.' only)")
    return to


def json_size(value: Any) -> int:
    return len(orjson.dumps(value))


def validate_send(req: SendRequest, limits: Limits, now: datetime) -> ValidSend:
    if req.template is not None:
        raise FieldError("template", "no template store is configured; send 'body' instead")
    country: str | None = None
    if req.channel is Channel.SMS:
        to, country = parse_phone(req.to)
    elif req.channel is Channel.EMAIL:
        to = normalize_email(req.to)
    else:
        to = check_push_token(req.to)

    if req.subject is not None:
        reject_control_characters("subject", req.subject)
    if req.channel is Channel.EMAIL and not req.subject:
        raise FieldError("subject", "is required for e-mail")
    if req.channel is Channel.PUSH:
        if not req.body and not req.data:
            raise FieldError("body", "a push needs a body or data")
    elif not req.body:
        raise FieldError("body", "is required")
    if req.body is not None and len(req.body) > limits.max_body_chars:
        raise FieldError("body", f"is longer than {limits.max_body_chars} characters", status=413)
    for name, value in (("metadata", req.metadata), ("data", req.data)):
        if value is not None and json_size(value) > limits.max_metadata_bytes:
            raise FieldError(name, f"is larger than {limits.max_metadata_bytes} bytes", status=413)

    send_at = req.send_at
    if send_at is not None:
        if send_at.tzinfo is None:
            raise FieldError("send_at", "needs a timezone (e.g. 2026-01-01T09:00:00Z)")
        if send_at - now > MAX_SCHEDULE_AHEAD:
            raise FieldError("send_at", "is more than 30 days ahead")
        if now - send_at > SEND_AT_SKEW:
            raise FieldError("send_at", "is more than 5 minutes in the past (omit it to send now)")
        if send_at <= now:  # within the clock skew allowed: send now
            send_at = None
    start = send_at or now
    expires_at = start + timedelta(seconds=req.expires_in_s) if req.expires_in_s else None

    return ValidSend(
        channel=req.channel,
        to=to,
        category=req.category,
        priority=req.priority or default_priority(req.category),
        subject=req.subject,
        body=req.body,
        data=req.data or {},
        metadata=req.metadata or {},
        expires_at=expires_at,
        send_at=send_at,
        country=country,
    )


def check_idempotency_key(key: str) -> str:
    if not key or len(key) > IDEMPOTENCY_KEY_MAX:
        raise FieldError(
            "Idempotency-Key", f"must be 1 to {IDEMPOTENCY_KEY_MAX} characters", status=400
        )
    if not all(0x20 < ord(c) < 0x7F for c in key):
        raise FieldError("Idempotency-Key", "must be printable ASCII without spaces", status=400)
    return key
