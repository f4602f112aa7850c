"""Unit tests for log masking (DESIGN §3): no phone number, address or OTP in clear."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from herald.logs import configure_logging, get_logger, mask_address, mask_personal_data, mask_text

NUMBER = "+447911123456"
CODE = "123456"


def process(**event: Any) -> dict[str, Any]:
    return dict(mask_personal_data(None, "info", dict(event)))


# mask_address ------------------------------------------------------------------------


def test_mask_address_keeps_country_code_and_last_two_digits_of_a_phone() -> None:
    masked = mask_address(NUMBER)
    assert masked == "+44********56"
    assert len(masked) == len(NUMBER)


def test_mask_address_keeps_first_letter_and_domain_of_an_email() -> None:
    assert mask_address("alice@example.com") == "a***@example.com"


@pytest.mark.parametrize("value", ["123456", "+1234", "ab"])
def test_mask_address_hides_short_values_entirely(value: str) -> None:
    assert mask_address(value) == "*" * len(value)


def test_mask_address_hides_the_middle_of_a_push_token() -> None:
    token = "fcm:APA91bSECRETTOKEN"
    masked = mask_address(token)
    assert "SECRETTOKEN" not in masked
    assert masked.startswith("fcm") and masked.endswith("EN")


# mask_text ---------------------------------------------------------------------------


def test_mask_text_masks_phone_numbers_inside_free_text() -> None:
    text = mask_text(f"vendor rejected {NUMBER}: not reachable")
    assert NUMBER not in text
    assert text == "vendor rejected +44********56: not reachable"


def test_mask_text_masks_email_addresses_inside_free_text() -> None:
    text = mask_text("bounce from bob.smith@mail.example.org (mailbox full)")
    assert "bob.smith" not in text
    assert text == "bounce from b***@mail.example.org (mailbox full)"


def test_mask_text_masks_several_addresses_at_once() -> None:
    text = mask_text(f"{NUMBER}, +919876543210 and carol@example.com failed")
    for secret in (NUMBER, "+919876543210", "carol@"):
        assert secret not in text


def test_mask_text_leaves_text_without_addresses_alone() -> None:
    text = "provider twilio timed out after 10s (code 503)"
    assert mask_text(text) == text


# The structlog processor ---------------------------------------------------------------


@pytest.mark.parametrize("key", ["body", "code", "otp", "password", "api_key", "authorization"])
def test_secret_keys_are_redacted(key: str) -> None:
    assert process(event="x", **{key: f"Your code is {CODE}"})[key] == "[redacted]"


def test_secret_key_that_is_not_a_string_is_redacted_too() -> None:
    assert process(event="x", code=123456)["code"] == "[redacted]"


def test_none_secret_stays_none() -> None:
    assert process(event="x", body=None)["body"] is None


@pytest.mark.parametrize("key", ["to", "recipient", "phone"])
def test_address_keys_are_masked(key: str) -> None:
    assert process(event="x", **{key: NUMBER})[key] == "+44********56"


def test_email_address_key_is_masked() -> None:
    assert process(event="x", email="alice@example.com")["email"] == "a***@example.com"


def test_other_string_values_are_scanned_for_addresses() -> None:
    out = process(event=f"send to {NUMBER} failed", error=f"invalid 'To' {NUMBER}")
    assert NUMBER not in out["event"]
    assert NUMBER not in out["error"]


def test_harmless_values_pass_through_unchanged() -> None:
    out = process(event="sent", notification_id="0192-abc", provider="twilio", attempt=3)
    assert out == {
        "event": "sent",
        "notification_id": "0192-abc",
        "provider": "twilio",
        "attempt": 3,
    }


# End to end: what lands on stderr ---------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put structlog and the root logger back as they were after the test.

    Tests call configure_logging themselves, inside the test body: the stream it binds
    is sys.stderr at that moment, and only there is it the one capsys reads.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def stderr_records(capsys: pytest.CaptureFixture[str]) -> tuple[str, list[dict[str, Any]]]:
    err = capsys.readouterr().err
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return err, records


def without_timestamp(record: dict[str, Any]) -> str:
    # The ISO timestamp's microseconds could spell "123456" by chance.
    return json.dumps({k: v for k, v in record.items() if k != "timestamp"})


@pytest.mark.usefixtures("restore_logging")
def test_logged_event_has_no_number_and_no_otp(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", json=True)
    get_logger("herald.test").info("sending", to=NUMBER, body=f"Your code is {CODE}")
    err, records = stderr_records(capsys)
    assert NUMBER not in err
    assert len(records) == 1
    record = records[0]
    assert CODE not in without_timestamp(record)
    assert record["event"] == "sending"
    assert record["to"] == "+44********56"
    assert record["body"] == "[redacted]"
    assert record["level"] == "info"


@pytest.mark.usefixtures("restore_logging")
def test_context_bound_address_is_masked(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", json=True)
    get_logger("herald.test").bind(to=NUMBER).warning("retry", error=f"throttled {NUMBER}")
    err, records = stderr_records(capsys)
    assert NUMBER not in err
    assert records[0]["to"] == "+44********56"


@pytest.mark.usefixtures("restore_logging")
def test_logged_exception_does_not_leak_the_number(capsys: pytest.CaptureFixture[str]) -> None:
    """A vendor error quoting the number, logged with log.exception (as the consumer does)."""
    configure_logging("INFO", json=True)
    log = get_logger("herald.test")
    try:
        raise RuntimeError(f"vendor rejected 'To' {NUMBER}")
    except RuntimeError:
        log.exception("delivery_crashed", notification_id="n-1")
    err, records = stderr_records(capsys)
    assert records[0]["event"] == "delivery_crashed"
    assert "RuntimeError" in records[0]["exception"]
    assert NUMBER not in err
