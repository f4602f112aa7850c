"""MSG91: the adapter against a local Flow API, then the whole pipeline. Only MSG91's
network boundary is faked."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from herald.domain import Category, Channel, Envelope, Priority
from herald.errors import PermanentProviderError, TransientProviderError
from providers.msg91 import ERROR_TABLE, HTTP_STATUS_TABLE, Msg91Provider
from tests.fakes.msg91_api import FakeMsg91, Msg91Error
from tests.fakes.twilio_api import free_port
from tests.support.stack import running_stack, stack_settings
from tests.test_twilio import routing, send_sms, vendor_message_id, wait_dead_letters

AUTH_KEY = "msg91-test-authkey"
TEMPLATE_ID = "65f0c0ffee0123456789abcd"
TO = "+919812345678"
ENV = {"HERALD_VENDOR_T_MSG91_KEY": AUTH_KEY, "HERALD_VENDOR_T_MSG91_TEMPLATE": TEMPLATE_ID}
CREDENTIALS = {
    "auth_key": "env:HERALD_VENDOR_T_MSG91_KEY",
    "template_id": "env:HERALD_VENDOR_T_MSG91_TEMPLATE",
}


def msg91_spec(endpoint: str) -> dict[str, Any]:
    return {
        "type": "msg91",
        "channel": "sms",
        "cost": {"IN": 0.002, "default": 0.05},
        "endpoint": endpoint,
        "credentials": dict(CREDENTIALS),
    }


def sms(body: str = "Your code is 123456", **data: Any) -> Envelope:
    return Envelope(
        id="n-1",
        channel=Channel.SMS,
        to=TO,
        category=Category.OTP,
        priority=Priority.HIGH,
        body=body,
        data=data,
    )


@pytest.fixture
def fake() -> FakeMsg91:
    return FakeMsg91(AUTH_KEY)


@pytest.fixture
async def endpoint(fake: FakeMsg91) -> AsyncIterator[str]:
    async with fake.running() as url:
        yield url


@pytest.fixture
async def provider(endpoint: str) -> AsyncIterator[Msg91Provider]:
    msg91 = Msg91Provider("msg91-in", Channel.SMS, msg91_spec(endpoint), env=ENV)
    yield msg91
    await msg91.close()


# -- the adapter ----------------------------------------------------------------------


async def test_send_reaches_msg91_with_authkey_template_and_variables(
    provider: Msg91Provider, fake: FakeMsg91
) -> None:
    receipt = await provider.send(sms("Your code is 123456", name="Asha", count=3))
    [arrived] = fake.received
    assert arrived["template_id"] == TEMPLATE_ID
    assert arrived["mobiles"] == "919812345678"
    assert arrived["body"] == "Your code is 123456"
    assert arrived["name"] == "Asha" and "count" not in arrived  # strings only
    assert receipt.vendor_message_id == arrived["request_id"]
    assert receipt.provider == "msg91-in"


async def test_wrong_authkey_is_a_permanent_config_error(endpoint: str) -> None:
    env = {**ENV, "HERALD_VENDOR_T_MSG91_KEY": "wrong"}
    msg91 = Msg91Provider("msg91-in", Channel.SMS, msg91_spec(endpoint), env=env)
    try:
        with pytest.raises(PermanentProviderError) as caught:
            await msg91.send(sms())
    finally:
        await msg91.close()
    assert caught.value.code == "207"


@pytest.mark.parametrize(("code", "row"), sorted(ERROR_TABLE.items()))
@pytest.mark.parametrize("status", [200, 400])  # MSG91 reports errors under either
async def test_each_msg91_error_code(
    provider: Msg91Provider, fake: FakeMsg91, code: str, row: tuple[str, str], status: int
) -> None:
    kind, _meaning = row
    fake.fail_next(Msg91Error(status, code, "from the table", retry_after="5"))
    expected = PermanentProviderError if kind == "permanent" else TransientProviderError
    with pytest.raises(expected) as caught:
        await provider.send(sms())
    assert type(caught.value) is expected and caught.value.code == code
    if kind == "transient":
        assert isinstance(caught.value, TransientProviderError)
        assert caught.value.retry_after == 5.0


@pytest.mark.parametrize(("status", "row"), sorted(HTTP_STATUS_TABLE.items()))
async def test_each_http_status_without_an_msg91_code(
    provider: Msg91Provider, fake: FakeMsg91, status: int, row: tuple[str, str]
) -> None:
    fake.fail_next(Msg91Error(status, None, retry_after="2" if status == 429 else None))
    expected = PermanentProviderError if row[0] == "permanent" else TransientProviderError
    with pytest.raises(expected) as caught:
        await provider.send(sms())
    assert type(caught.value) is expected and caught.value.code == str(status)
    if status == 429:
        assert isinstance(caught.value, TransientProviderError)
        assert caught.value.retry_after == 2.0


async def test_unknown_code_is_transient_and_logged_once(
    provider: Msg91Provider, fake: FakeMsg91
) -> None:
    fake.fail_next(*[Msg91Error(400, "999", "new in the API")] * 2, Msg91Error(418, None))
    with capture_logs() as logs:
        for expected_code in ("999", "999", "http_418"):
            with pytest.raises(TransientProviderError) as caught:
                await provider.send(sms())
            assert caught.value.code == expected_code
    warned = [e["code"] for e in logs if e["event"] == "msg91_unknown_error_code"]
    assert warned == ["999", "http_418"]


async def test_connection_refused_is_transient() -> None:
    spec = msg91_spec(f"http://127.0.0.1:{free_port()}")
    msg91 = Msg91Provider("msg91-in", Channel.SMS, spec, env=ENV)
    try:
        with pytest.raises(TransientProviderError) as caught:
            await msg91.send(sms())
    finally:
        await msg91.close()
    assert caught.value.code == "connection_error"


async def test_a_slow_answer_times_out_as_transient(endpoint: str, fake: FakeMsg91) -> None:
    fake.delay_s = 2
    msg91 = Msg91Provider("msg91-in", Channel.SMS, msg91_spec(endpoint), env=ENV, timeout_s=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(TransientProviderError) as caught:
            await msg91.send(sms())
    finally:
        await msg91.close()
    assert caught.value.code == "timeout" and time.monotonic() - started < 1.5


async def test_a_body_over_ten_segments_never_reaches_msg91(
    provider: Msg91Provider, fake: FakeMsg91
) -> None:
    with pytest.raises(PermanentProviderError) as caught:
        await provider.send(sms("नमस्ते" * 120))  # UCS-2: 720 units, 11 parts of 67
    assert caught.value.code == "body_too_long" and fake.requests == 0


# -- the whole pipeline ---------------------------------------------------------------


@pytest.fixture
def msg91_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def values(sqlite_url: str, tmp_path: Path, endpoint: str, msg91_env: None) -> dict[str, Any]:
    rules = routing(tmp_path, "msg91-in", msg91_spec(endpoint))
    return stack_settings(sqlite_url, routing_file=rules)


@pytest.mark.integration
async def test_pipeline_sends_through_msg91(values: dict[str, Any], fake: FakeMsg91) -> None:
    async with running_stack(values) as stack:
        nid = await send_sms(stack, "+919812345601", "Hello through MSG91")
        done = await stack.wait_status(nid, "sent")
        vendor_id = await vendor_message_id(stack, nid)
    [arrived] = fake.received
    assert (arrived["mobiles"], arrived["body"]) == ("919812345601", "Hello through MSG91")
    assert [(a["provider"], a["outcome"]) for a in done["attempts"]] == [("msg91-in", "sent")]
    assert vendor_id == arrived["request_id"]


@pytest.mark.integration
async def test_pipeline_permanent_error_fails_at_once_and_is_dead_lettered(
    values: dict[str, Any], fake: FakeMsg91
) -> None:
    fake.outage = Msg91Error(200, "202", "invalid mobile number")
    async with running_stack(values) as stack:
        nid = await send_sms(stack, "+919812345602")
        done = await stack.wait_status(nid, "failed")
        dead = await wait_dead_letters(stack, 1)
    assert [a["outcome"] for a in done["attempts"]] == ["permanent_error"]
    assert done["last_error_code"] == "202" and fake.requests == 1
    assert (dead[0].notification_id, dead[0].reason) == (nid, "permanent_error")


@pytest.mark.integration
async def test_pipeline_transient_errors_retry_then_succeed(
    values: dict[str, Any], fake: FakeMsg91
) -> None:
    fake.fail_next(Msg91Error(200, "306", "route unavailable"), Msg91Error(502))
    async with running_stack(values) as stack:
        nid = await send_sms(stack, "+919812345603")
        done = await stack.wait_status(nid, "sent")
    assert [(a["outcome"], a["error_code"]) for a in done["attempts"]] == [
        ("transient_error", "306"),
        ("transient_error", "502"),
        ("sent", None),
    ]
    assert len(fake.received) == 1


@pytest.mark.integration
async def test_pipeline_fails_over_to_the_next_provider_in_the_same_delivery(
    sqlite_url: str, tmp_path: Path, endpoint: str, msg91_env: None, fake: FakeMsg91
) -> None:
    fake.outage = Msg91Error(503)
    rules = routing(tmp_path, "msg91-in", msg91_spec(endpoint), second=True)
    async with running_stack(stack_settings(sqlite_url, routing_file=rules)) as stack:
        nid = await send_sms(stack, "+919812345604")
        done = await stack.wait_status(nid, "sent")
        [copy] = await stack.sandbox(nid)
    assert [(a["provider"], a["outcome"]) for a in done["attempts"]] == [
        ("msg91-in", "transient_error"),
        ("sandbox-sms", "sent"),
    ]
    assert copy["to"] == "+919812345604" and fake.received == []
