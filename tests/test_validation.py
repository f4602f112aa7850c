"""Unit tests for send-request validation (DESIGN §4.7, §9): every rule names its field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import phonenumbers
import pytest
from phonenumbers import PhoneNumberFormat, PhoneNumberType
from pydantic import ValidationError

from herald.domain import Category, Channel, Priority
from producer.problems import FieldError, Problem
from producer.validation import (
    IDEMPOTENCY_KEY_MAX,
    Limits,
    SendRequest,
    check_idempotency_key,
    check_push_token,
    normalize_email,
    normalize_phone,
    reject_control_characters,
    validate_send,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LIMITS = Limits(max_body_chars=100, max_metadata_bytes=64)
MOBILE = "+447911123456"
PUSH_TOKEN = "fcm:APA91b_Abc-123.xyz"


def example_number(kind: PhoneNumberType) -> str:
    number = phonenumbers.example_number_for_type("GB", kind)
    assert number is not None
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


def assert_field_error(exc: Problem, field: str, status: int = 422) -> None:
    assert isinstance(exc, FieldError)
    assert exc.status == status
    assert [e["field"] for e in exc.errors] == [field]
    assert exc.errors[0]["message"]


def request(**overrides: Any) -> SendRequest:
    fields: dict[str, Any] = {"channel": "sms", "to": MOBILE, "category": "transactional"}
    fields["body"] = "Your parcel is on its way"
    if overrides.get("channel") == "email":
        fields.update(to="alice@example.com", subject="Hello")
    if overrides.get("channel") == "push":
        fields.update(to=PUSH_TOKEN)
    fields.update(overrides)
    return SendRequest.model_validate(fields)


def rejected(req: SendRequest, limits: Limits = LIMITS, now: datetime = NOW) -> FieldError:
    with pytest.raises(FieldError) as info:
        validate_send(req, limits, now)
    return info.value


# Phone numbers ----------------------------------------------------------------------


def test_valid_mobile_is_normalised_to_e164() -> None:
    assert normalize_phone("+44 7911 123456") == "+447911123456"


def test_validate_send_stores_the_e164_form_of_an_sms_number() -> None:
    valid = validate_send(request(to="+44 (0) 7911 123456"), LIMITS, NOW)
    assert valid.to == "+447911123456"


@pytest.mark.parametrize(
    "number",
    ["+44123", "+abc", "+", "+1 555 010 0000"],
    ids=["too-short", "letters", "plus-only", "unassigned-range"],
)
def test_invalid_number_is_rejected_naming_to(number: str) -> None:
    with pytest.raises(FieldError) as info:
        normalize_phone(number)
    assert_field_error(info.value, "to")


def test_number_without_plus_is_rejected_with_a_hint() -> None:
    with pytest.raises(FieldError) as info:
        normalize_phone("447911123456")
    assert_field_error(info.value, "to")
    assert "+" in info.value.errors[0]["message"]


def test_premium_rate_number_is_refused() -> None:
    premium = example_number(PhoneNumberType.PREMIUM_RATE)
    with pytest.raises(FieldError) as info:
        normalize_phone(premium)
    assert_field_error(info.value, "to")
    assert "premium" in info.value.errors[0]["message"]


def test_fixed_line_only_number_cannot_receive_sms() -> None:
    landline = example_number(PhoneNumberType.FIXED_LINE)
    e = rejected(request(to=landline))
    assert_field_error(e, "to")
    assert "SMS" in e.errors[0]["message"]


def test_fixed_line_or_mobile_number_is_accepted() -> None:
    # North American numbers cannot be told apart: they must still get SMS.
    assert normalize_phone("+1 415 555 2671") == "+14155552671"


def test_phone_field_name_is_configurable() -> None:
    with pytest.raises(FieldError) as info:
        normalize_phone("07911123456", field="phone")
    assert_field_error(info.value, "phone")


# E-mail -----------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["not-an-email", "alice@", "alice@localhost", "a b@x.com"])
def test_invalid_email_is_rejected_naming_to(address: str) -> None:
    e = rejected(request(channel="email", to=address))
    assert_field_error(e, "to")


def test_valid_email_is_normalised() -> None:
    valid = validate_send(request(channel="email", to="Alice@Example.COM"), LIMITS, NOW)
    assert valid.to == "Alice@example.com"


@pytest.mark.parametrize("sep", ["\r\n", "\n", "\r"])
def test_line_break_in_email_address_is_refused(sep: str) -> None:
    with pytest.raises(FieldError) as info:
        normalize_email(f"alice@example.com{sep}Bcc: mallory@example.net")
    assert_field_error(info.value, "to")
    assert "line break" in info.value.errors[0]["message"]


#: Every character ``str.splitlines`` breaks on, and the other controls (issue 10 #9:
#: U+2028, NEL, VT and FF were accepted, then crashed the SMTP worker 21 times).
SEPARATORS = [
    "\r\n", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029",
    "\x00", "\t", "\x1b", "\x7f", "\x9f",
]  # fmt: skip


@pytest.mark.parametrize("sep", SEPARATORS, ids=[f"U+{ord(s[-1]):04X}" for s in SEPARATORS])
@pytest.mark.parametrize("channel", ["email", "push"])
def test_line_separator_or_control_character_in_subject_is_refused(sep: str, channel: str) -> None:
    e = rejected(request(channel=channel, subject=f"Hello{sep}Bcc: mallory@example.net"))
    assert_field_error(e, "subject")
    assert f"U+{ord(sep[0]):04X}" in e.errors[0]["message"]


def test_reject_control_characters_accepts_plain_text_and_names_the_given_field() -> None:
    reject_control_characters("subject", "Hello, world — ünïcode ✓ 日本語")
    with pytest.raises(FieldError) as info:
        reject_control_characters("reply_to", "a\u2028b")
    assert_field_error(info.value, "reply_to")


# Push tokens ------------------------------------------------------------------------


def test_push_token_with_allowed_charset_is_kept_verbatim() -> None:
    assert check_push_token(PUSH_TOKEN) == PUSH_TOKEN


@pytest.mark.parametrize("token", ["abc def", "abc/def", "abc\ndef", "tok<script>", "a+b=="])
def test_push_token_with_bad_characters_is_rejected(token: str) -> None:
    with pytest.raises(FieldError) as info:
        check_push_token(token)
    assert_field_error(info.value, "to")


def test_push_token_longer_than_4096_is_rejected() -> None:
    check_push_token("a" * 4096)
    with pytest.raises(FieldError) as info:
        check_push_token("a" * 4097)
    assert_field_error(info.value, "to")


def test_push_with_data_only_is_accepted() -> None:
    valid = validate_send(request(channel="push", body=None, data={"k": "v"}), LIMITS, NOW)
    assert valid.body is None
    assert valid.data == {"k": "v"}


def test_push_without_body_or_data_is_rejected() -> None:
    e = rejected(request(channel="push", body=None))
    assert_field_error(e, "body")


# Required fields and sizes ----------------------------------------------------------


@pytest.mark.parametrize("channel", ["sms", "email"])
@pytest.mark.parametrize("body", [None, ""])
def test_body_is_required_for_sms_and_email(channel: str, body: str | None) -> None:
    e = rejected(request(channel=channel, body=body))
    assert_field_error(e, "body")


@pytest.mark.parametrize("subject", [None, ""])
def test_subject_is_required_for_email(subject: str | None) -> None:
    e = rejected(request(channel="email", subject=subject))
    assert_field_error(e, "subject")


def test_sms_needs_no_subject() -> None:
    assert validate_send(request(), LIMITS, NOW).subject is None


def test_body_at_the_limit_is_accepted() -> None:
    valid = validate_send(request(body="x" * LIMITS.max_body_chars), LIMITS, NOW)
    assert valid.body == "x" * LIMITS.max_body_chars


def test_body_over_the_limit_is_413_naming_body() -> None:
    e = rejected(request(body="x" * (LIMITS.max_body_chars + 1)))
    assert_field_error(e, "body", status=413)


@pytest.mark.parametrize("field", ["metadata", "data"])
def test_metadata_or_data_over_the_limit_is_413_naming_the_field(field: str) -> None:
    big = {"blob": "x" * LIMITS.max_metadata_bytes}
    e = rejected(request(**{field: big}))
    assert_field_error(e, field, status=413)


@pytest.mark.parametrize("field", ["metadata", "data"])
def test_metadata_or_data_under_the_limit_is_kept(field: str) -> None:
    small = {"order": "A-1"}
    valid = validate_send(request(**{field: small}), LIMITS, NOW)
    assert getattr(valid, field) == small


def test_missing_metadata_and_data_become_empty_dicts() -> None:
    valid = validate_send(request(), LIMITS, NOW)
    assert valid.metadata == {}
    assert valid.data == {}


def test_template_is_rejected_naming_template() -> None:
    e = rejected(request(template="welcome", body=None))
    assert_field_error(e, "template")


# Scheduling and expiry --------------------------------------------------------------


def test_send_at_without_timezone_is_rejected() -> None:
    e = rejected(request(send_at=datetime(2026, 3, 2, 9, 0)))
    assert_field_error(e, "send_at")
    assert "timezone" in e.errors[0]["message"]


def test_send_at_more_than_30_days_ahead_is_rejected() -> None:
    e = rejected(request(send_at=NOW + timedelta(days=30, seconds=1)))
    assert_field_error(e, "send_at")


def test_send_at_exactly_30_days_ahead_is_accepted() -> None:
    when = NOW + timedelta(days=30)
    assert validate_send(request(send_at=when), LIMITS, NOW).send_at == when


def test_send_at_in_the_future_is_kept() -> None:
    when = NOW + timedelta(hours=3)
    assert validate_send(request(send_at=when), LIMITS, NOW).send_at == when


@pytest.mark.parametrize("ago", [timedelta(0), timedelta(minutes=1), timedelta(minutes=5)])
def test_send_at_now_or_within_the_clock_skew_means_send_now(ago: timedelta) -> None:
    valid = validate_send(request(send_at=NOW - ago, expires_in_s=60), LIMITS, NOW)
    assert valid.send_at is None
    assert valid.expires_at == NOW + timedelta(seconds=60)


@pytest.mark.parametrize("ago", [timedelta(minutes=5, seconds=1), timedelta(days=400)])
def test_send_at_further_in_the_past_is_refused_not_sent_at_once(ago: timedelta) -> None:
    e = rejected(request(send_at=NOW - ago))
    assert_field_error(e, "send_at")
    assert "in the past" in e.errors[0]["message"]


@pytest.mark.parametrize(
    "value",
    [1_900_000_000, "1900000000", True, "next tuesday", "2026-13-01T00:00:00Z"],
    ids=["unix-int", "unix-string", "bool", "prose", "month-13"],
)
def test_send_at_must_be_an_iso_8601_string(value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        request(send_at=value)
    assert info.value.errors()[0]["loc"] == ("send_at",)


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_send_at_without_a_utc_instant_is_refused(value: str) -> None:
    with pytest.raises(ValidationError) as info:
        request(send_at=value)
    assert info.value.errors()[0]["loc"] == ("send_at",)
    assert "range" in info.value.errors()[0]["msg"]


def test_expires_in_s_counts_from_now_without_send_at() -> None:
    valid = validate_send(request(expires_in_s=300), LIMITS, NOW)
    assert valid.expires_at == NOW + timedelta(seconds=300)


def test_expires_in_s_counts_from_send_at() -> None:
    when = NOW + timedelta(days=2)
    valid = validate_send(request(send_at=when, expires_in_s=600), LIMITS, NOW)
    assert valid.expires_at == when + timedelta(seconds=600)


def test_no_expires_in_s_means_no_expiry() -> None:
    assert validate_send(request(), LIMITS, NOW).expires_at is None


@pytest.mark.parametrize("value", [0, -1, 7 * 24 * 3600 + 1])
def test_expires_in_s_out_of_range_is_rejected_by_the_model(value: int) -> None:
    with pytest.raises(ValidationError) as info:
        request(expires_in_s=value)
    assert info.value.errors()[0]["loc"] == ("expires_in_s",)


@pytest.mark.parametrize("value", [True, False, "60", 60.0, "1e3"])
def test_expires_in_s_takes_a_json_integer_only(value: Any) -> None:
    # Lax pydantic took `true` as 1 s and "60" as 60 s (issue 11 #7).
    with pytest.raises(ValidationError) as info:
        request(expires_in_s=value)
    assert info.value.errors()[0]["loc"] == ("expires_in_s",)


# Priority ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("category", "priority"),
    [("otp", Priority.HIGH), ("transactional", Priority.NORMAL), ("marketing", Priority.LOW)],
)
def test_default_priority_follows_category(category: str, priority: Priority) -> None:
    valid = validate_send(request(category=category), LIMITS, NOW)
    assert valid.priority is priority
    assert valid.category is Category(category)
    assert valid.channel is Channel.SMS


def test_explicit_priority_wins_over_the_category_default() -> None:
    valid = validate_send(request(category="marketing", priority="high"), LIMITS, NOW)
    assert valid.priority is Priority.HIGH


# The request model -------------------------------------------------------------------


def test_unknown_field_is_rejected_not_ignored() -> None:
    with pytest.raises(ValidationError) as info:
        request(recipient="+447911123456")
    errors = info.value.errors()
    assert [(e["type"], e["loc"]) for e in errors] == [("extra_forbidden", ("recipient",))]


@pytest.mark.parametrize(
    ("field", "value"), [("channel", "fax"), ("category", "spam"), ("priority", "urgent")]
)
def test_unknown_enum_value_is_rejected(field: str, value: str) -> None:
    with pytest.raises(ValidationError) as info:
        request(**{field: value})
    assert info.value.errors()[0]["loc"] == (field,)


def test_missing_required_fields_are_reported() -> None:
    with pytest.raises(ValidationError) as info:
        SendRequest.model_validate({"body": "hi"})
    missing = {e["loc"][0] for e in info.value.errors() if e["type"] == "missing"}
    assert missing == {"channel", "to", "category"}


def test_empty_to_is_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        request(to="")
    assert info.value.errors()[0]["loc"] == ("to",)


# Idempotency-Key ----------------------------------------------------------------------


def test_idempotency_key_of_printable_ascii_is_accepted() -> None:
    key = "order-42:retry_1/~!"
    assert check_idempotency_key(key) == key
    assert check_idempotency_key("k" * IDEMPOTENCY_KEY_MAX) == "k" * IDEMPOTENCY_KEY_MAX


@pytest.mark.parametrize(
    "key",
    ["", "k" * (IDEMPOTENCY_KEY_MAX + 1), "has space", "tab\there", "line\nbreak", "clé", "键"],
    ids=["empty", "too-long", "space", "tab", "newline", "accent", "cjk"],
)
def test_bad_idempotency_key_is_400_naming_the_header(key: str) -> None:
    with pytest.raises(FieldError) as info:
        check_idempotency_key(key)
    assert_field_error(info.value, "Idempotency-Key", status=400)
