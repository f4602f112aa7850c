"""Twilio: the adapter against a local Twilio API, then the whole pipeline, then the
status webhook. Only Twilio's network boundary is faked; the SDK is the real one."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest
import yaml
from structlog.testing import capture_logs
from twilio.request_validator import RequestValidator

from herald.domain import Category, Channel, Envelope, Priority
from herald.errors import PermanentProviderError, TransientProviderError
from herald.storage.models import Notification
from providers.twilio import ERROR_TABLE, HTTP_STATUS_TABLE, TwilioProvider
from tests.fakes.twilio_api import FakeError, FakeTwilio, free_port
from tests.support.stack import Stack, running_stack, stack_settings

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "twilio-test-token"
FROM = "+15005550006"
TO = "+447911123123"
ENV = {
    "HERALD_VENDOR_T_TWILIO_SID": ACCOUNT_SID,
    "HERALD_VENDOR_T_TWILIO_TOKEN": AUTH_TOKEN,
    "HERALD_VENDOR_T_TWILIO_FROM": FROM,
}
CREDENTIALS = {
    "account_sid": "env:HERALD_VENDOR_T_TWILIO_SID",
    "auth_token": "env:HERALD_VENDOR_T_TWILIO_TOKEN",
    "from": "env:HERALD_VENDOR_T_TWILIO_FROM",
}
WEBHOOK_PATH = "/v1/webhooks/twilio/status"


def twilio_spec(endpoint: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "twilio",
        "channel": "sms",
        "cost": {"default": 0.0079},
        "endpoint": endpoint,
        "credentials": dict(CREDENTIALS),
        **extra,
    }


def sms(body: str = "Your code is 123456", to: str = TO, nid: str = "n-1") -> Envelope:
    return Envelope(
        id=nid,
        channel=Channel.SMS,
        to=to,
        category=Category.TRANSACTIONAL,
        priority=Priority.NORMAL,
        body=body,
    )


@pytest.fixture
def fake() -> FakeTwilio:
    return FakeTwilio(ACCOUNT_SID, AUTH_TOKEN)


@pytest.fixture
async def endpoint(fake: FakeTwilio) -> AsyncIterator[str]:
    async with fake.running() as url:
        yield url


@pytest.fixture
async def provider(endpoint: str) -> AsyncIterator[TwilioProvider]:
    twilio = TwilioProvider("twilio", Channel.SMS, twilio_spec(endpoint), env=ENV)
    yield twilio
    await twilio.close()


# -- the adapter ----------------------------------------------------------------------


async def test_send_reaches_twilio_with_auth_and_fields(
    provider: TwilioProvider, fake: FakeTwilio
) -> None:
    receipt = await provider.send(sms("Hello from Herald"))
    [arrived] = fake.received
    assert (arrived["to"], arrived["from"], arrived["body"]) == (TO, FROM, "Hello from Herald")
    assert arrived["status_callback"] is None
    assert receipt.provider == "twilio"
    assert receipt.vendor_message_id == arrived["sid"]


async def test_one_sdk_client_per_provider_reused_for_every_send(
    provider: TwilioProvider, fake: FakeTwilio
) -> None:
    await provider.send(sms(nid="a"))
    client = provider._client
    await asyncio.gather(*(provider.send(sms(nid=str(i))) for i in range(5)))
    assert provider._client is client and len(fake.received) == 6
    await provider.close()
    assert provider._http is None


async def test_status_callback_and_messaging_service_are_passed(
    endpoint: str, fake: FakeTwilio
) -> None:
    env = {**ENV, "HERALD_VENDOR_T_TWILIO_FROM": "MG" + "a" * 32}
    spec = twilio_spec(endpoint, status_callback="https://herald.example.com" + WEBHOOK_PATH)
    twilio = TwilioProvider("twilio", Channel.SMS, spec, env=env)
    try:
        await twilio.send(sms())
    finally:
        await twilio.close()
    [arrived] = fake.received
    assert arrived["status_callback"] == "https://herald.example.com" + WEBHOOK_PATH
    assert arrived["messaging_service_sid"] == "MG" + "a" * 32 and arrived["from"] is None


async def test_wrong_auth_token_is_a_permanent_config_error(endpoint: str) -> None:
    twilio = TwilioProvider(
        "twilio",
        Channel.SMS,
        twilio_spec(endpoint),
        env={**ENV, "HERALD_VENDOR_T_TWILIO_TOKEN": "no"},
    )
    try:
        with pytest.raises(PermanentProviderError) as caught:
            await twilio.send(sms())
    finally:
        await twilio.close()
    assert caught.value.code == "20003"


@pytest.mark.parametrize(("code", "row"), sorted(ERROR_TABLE.items()))
async def test_each_twilio_error_code(
    provider: TwilioProvider, fake: FakeTwilio, code: int, row: tuple[str, str]
) -> None:
    kind, _meaning = row
    status = 429 if code == 20429 else 500 if kind == "transient" else 400
    fake.fail_next(FakeError(status, code, "from the table", retry_after="7"))
    expected = PermanentProviderError if kind == "permanent" else TransientProviderError
    with pytest.raises(expected) as caught:
        await provider.send(sms())
    assert type(caught.value) is expected
    assert caught.value.code == str(code)
    if kind == "transient":
        assert isinstance(caught.value, TransientProviderError)
        assert caught.value.retry_after == 7.0
    assert fake.received == []


@pytest.mark.parametrize(("status", "row"), sorted(HTTP_STATUS_TABLE.items()))
async def test_each_http_status_without_a_twilio_code(
    provider: TwilioProvider, fake: FakeTwilio, status: int, row: tuple[str, str]
) -> None:
    fake.fail_next(FakeError(status, None, retry_after="3" if status == 429 else None))
    expected = PermanentProviderError if row[0] == "permanent" else TransientProviderError
    with pytest.raises(expected) as caught:
        await provider.send(sms())
    assert type(caught.value) is expected and caught.value.code == str(status)
    if status == 429:
        assert isinstance(caught.value, TransientProviderError)
        assert caught.value.retry_after == 3.0


async def test_unknown_code_is_transient_and_logged_once(
    provider: TwilioProvider, fake: FakeTwilio
) -> None:
    fake.fail_next(*[FakeError(400, 29999, "new in the API")] * 3)
    with capture_logs() as logs:
        for _ in range(3):
            with pytest.raises(TransientProviderError) as caught:
                await provider.send(sms())
            assert caught.value.code == "29999"
    warned = [e for e in logs if e["event"] == "twilio_unknown_error_code"]
    assert len(warned) == 1 and warned[0]["code"] == "29999"


async def test_connection_refused_is_transient() -> None:
    spec = twilio_spec(f"http://127.0.0.1:{free_port()}")
    twilio = TwilioProvider("twilio", Channel.SMS, spec, env=ENV)
    try:
        with pytest.raises(TransientProviderError) as caught:
            await twilio.send(sms())
    finally:
        await twilio.close()
    assert caught.value.code == "connection_error"


async def test_a_slow_answer_times_out_as_transient(endpoint: str, fake: FakeTwilio) -> None:
    fake.delay_s = 2
    twilio = TwilioProvider("twilio", Channel.SMS, twilio_spec(endpoint), env=ENV, timeout_s=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(TransientProviderError) as caught:
            await twilio.send(sms())
    finally:
        await twilio.close()
    assert caught.value.code == "timeout"
    assert time.monotonic() - started < 1.5


async def test_a_body_over_ten_segments_never_reaches_twilio(
    provider: TwilioProvider, fake: FakeTwilio
) -> None:
    with pytest.raises(PermanentProviderError) as caught:
        await provider.send(sms("x" * 1531))
    assert caught.value.code == "body_too_long"
    assert fake.requests == 0


async def test_load_1000_sms_keep_the_event_loop_responsive(fake: FakeTwilio) -> None:
    """1,000 sends, 100 at a time, with the fake in a process of its own so the loop
    measured is the adapter's; a ticker records how late each 10 ms sleep wakes up."""
    async with fake.running(in_process=True) as url:
        twilio = TwilioProvider("twilio", Channel.SMS, twilio_spec(url), env=ENV)
        lags: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            while not done.is_set():
                started = time.perf_counter()
                await asyncio.sleep(0.010)
                lags.append(time.perf_counter() - started - 0.010)

        gate = asyncio.Semaphore(100)

        async def one(i: int) -> None:
            async with gate:
                await twilio.send(sms(f"load {i}", to=f"+4477009{i:05d}", nid=f"load-{i}"))

        ticking = asyncio.create_task(ticker())
        started = time.perf_counter()
        try:
            await asyncio.gather(*(one(i) for i in range(1000)))
        finally:
            elapsed = time.perf_counter() - started
            done.set()
            await ticking
            await twilio.close()
    p99 = statistics.quantiles(lags, n=100, method="inclusive")[98]
    print(
        f"\n1,000 SMS through twilio in {elapsed:.2f}s: event-loop lag worst "
        f"{max(lags) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, median "
        f"{statistics.median(lags) * 1000:.1f} ms over {len(lags)} ticks"
    )
    copies = Counter(m["body"] for m in fake.received)
    assert len(copies) == 1000 and set(copies.values()) == {1}


# -- the whole pipeline ---------------------------------------------------------------


def routing(tmp_path: Path, name: str, spec: dict[str, Any], *, second: bool = False) -> str:
    """A rules file whose SMS rule sends through one vendor (then a sandbox, if asked)."""
    providers: dict[str, Any] = {
        name: spec,
        "sandbox-email": {"type": "sandbox", "channel": "email", "cost": {"default": 0}},
        "sandbox-push": {"type": "sandbox", "channel": "push", "cost": {"default": 0}},
    }
    tier = [name]
    if second:
        providers["sandbox-sms"] = {"type": "sandbox", "channel": "sms", "cost": {"default": 1}}
        tier.append("sandbox-sms")
    doc = {
        "providers": providers,
        "rules": [
            {"name": "sms", "match": {"channel": "sms"}, "tiers": [tier]},
            {"name": "email", "match": {"channel": "email"}, "tiers": [["sandbox-email"]]},
            {"name": "push", "match": {"channel": "push"}, "tiers": [["sandbox-push"]]},
        ],
    }
    path = tmp_path / "routing.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.fixture
def twilio_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def values(sqlite_url: str, tmp_path: Path, endpoint: str, twilio_env: None) -> dict[str, Any]:
    return stack_settings(
        sqlite_url, routing_file=routing(tmp_path, "twilio", twilio_spec(endpoint))
    )


async def send_sms(stack: Stack, to: str, body: str = "Your code is 123456") -> str:
    response = await stack.send(channel="sms", to=to, category="transactional", body=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


@pytest.mark.integration
async def test_pipeline_sends_through_twilio(values: dict[str, Any], fake: FakeTwilio) -> None:
    async with running_stack(values) as stack:
        nid = await send_sms(stack, "+447911123201", "Hello through Twilio")
        done = await stack.wait_status(nid, "sent")
        vendor_id = await vendor_message_id(stack, nid)
    [arrived] = fake.received
    assert (arrived["to"], arrived["from"], arrived["body"]) == (
        "+447911123201",
        FROM,
        "Hello through Twilio",
    )
    assert [(a["provider"], a["outcome"]) for a in done["attempts"]] == [("twilio", "sent")]
    assert vendor_id == arrived["sid"]


@pytest.mark.integration
async def test_pipeline_permanent_error_fails_at_once_and_is_dead_lettered(
    values: dict[str, Any], fake: FakeTwilio
) -> None:
    fake.outage = FakeError(400, 21211, "The 'To' number is not a valid phone number.")
    async with running_stack(values) as stack:
        nid = await send_sms(stack, "+447911123202")
        done = await stack.wait_status(nid, "failed")
        dead = await wait_dead_letters(stack, 1)
    assert [a["outcome"] for a in done["attempts"]] == ["permanent_error"]
    assert done["last_error_code"] == "21211"
    assert fake.requests == 1
    assert (dead[0].notification_id, dead[0].reason) == (nid, "permanent_error")


@pytest.mark.integration
async def test_pipeline_transient_errors_retry_then_succeed(
    values: dict[str, Any], fake: FakeTwilio
) -> None:
    fake.fail_next(FakeError(429, 20429, "Too Many Requests", retry_after="0"), FakeError(503))
    async with running_stack(values) as stack:
        nid = await send_sms(stack, "+447911123203")
        done = await stack.wait_status(nid, "sent")
    assert [a["outcome"] for a in done["attempts"]] == [
        "transient_error",
        "transient_error",
        "sent",
    ]
    assert [a["error_code"] for a in done["attempts"][:2]] == ["20429", "503"]
    assert len(fake.received) == 1


@pytest.mark.integration
async def test_pipeline_fails_over_to_the_next_provider_in_the_same_delivery(
    sqlite_url: str, tmp_path: Path, endpoint: str, twilio_env: None, fake: FakeTwilio
) -> None:
    fake.outage = FakeError(503, 20503, "Service Unavailable")
    rules = routing(tmp_path, "twilio", twilio_spec(endpoint), second=True)
    values = stack_settings(sqlite_url, routing_file=rules)
    async with running_stack(values) as stack:
        nid = await send_sms(stack, "+447911123204")
        done = await stack.wait_status(nid, "sent")
        [copy] = await stack.sandbox(nid)
    assert [(a["provider"], a["outcome"]) for a in done["attempts"]] == [
        ("twilio", "transient_error"),
        ("sandbox-sms", "sent"),
    ]
    assert copy["to"] == "+447911123204" and fake.received == []


async def vendor_message_id(stack: Stack, nid: str) -> str:
    """The vendor's id as recorded (the API does not show it)."""
    async with stack.sessions() as session:
        row = await session.get(Notification, nid)
    assert row is not None and row.vendor_message_id
    return str(row.vendor_message_id)


async def wait_dead_letters(stack: Stack, count: int) -> list[Any]:
    deadline = time.monotonic() + 15
    while len(rows := await stack.dead_letters()) < count:
        assert time.monotonic() < deadline, "no dead letter"
        await asyncio.sleep(0.1)
    return rows


# -- the status webhook ---------------------------------------------------------------


def signed(url: str, params: dict[str, str], token: str = AUTH_TOKEN) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(token).compute_signature(url, params)}


def callback(sid: str, status: str, **extra: str) -> dict[str, str]:
    return {
        "MessageSid": sid,
        "SmsSid": sid,
        "AccountSid": ACCOUNT_SID,
        "MessageStatus": status,
        "SmsStatus": status,
        "To": TO,
        "From": FROM,
        "ApiVersion": "2010-04-01",
        **extra,
    }


async def post_callback(stack: Stack, params: dict[str, str], **headers: str) -> Any:
    return await stack.client.post(WEBHOOK_PATH, data=params, headers=headers)


async def sent_message(stack: Stack, to: str) -> tuple[str, str]:
    nid = await send_sms(stack, to)
    await stack.wait_status(nid, "sent")
    return nid, await vendor_message_id(stack, nid)


@pytest.mark.integration
async def test_signed_delivered_callback_moves_it_to_delivered_and_publishes(
    values: dict[str, Any],
) -> None:
    async with running_stack(values) as stack:
        connection = await aio_pika.connect(stack.settings.amqp_url)
        async with connection:
            channel = await connection.channel()
            events = await channel.declare_queue(exclusive=True)
            await events.bind("herald.events", routing_key="delivered.#")
            nid, sid = await sent_message(stack, "+447911123205")
            params = callback(sid, "delivered")
            response = await post_callback(
                stack, params, **signed(stack.url + WEBHOOK_PATH, params)
            )
            assert response.status_code == 200, response.text
            assert (await stack.notification(nid))["status"] == "delivered"
            message = await events.get(timeout=5, fail=True)
            assert message is not None
            event = orjson.loads(message.body)
    assert (event["event"], event["id"], event["provider"]) == ("delivered", nid, "twilio")


@pytest.mark.integration
async def test_undelivered_callback_records_the_error_code(values: dict[str, Any]) -> None:
    async with running_stack(values) as stack:
        nid, sid = await sent_message(stack, "+447911123206")
        params = callback(sid, "undelivered", ErrorCode="30003")
        response = await post_callback(stack, params, **signed(stack.url + WEBHOOK_PATH, params))
        assert response.status_code == 200
        done = await stack.notification(nid)
    assert done["status"] == "undelivered"
    assert done["last_error_code"] == "30003"
    assert "unreachable" in done["last_error"]


@pytest.mark.integration
async def test_bad_or_missing_signature_is_403_and_changes_nothing(
    values: dict[str, Any],
) -> None:
    async with running_stack(values) as stack:
        nid, sid = await sent_message(stack, "+447911123207")
        params = callback(sid, "delivered")
        url = stack.url + WEBHOOK_PATH
        forged = signed(url, params, token="not-the-token")
        tampered = signed(url, {**params, "MessageStatus": "undelivered"})
        for headers in (forged, tampered, {}):
            response = await post_callback(stack, params, **headers)
            assert response.status_code == 403
            assert response.headers["content-type"] == "application/problem+json"
        assert (await stack.notification(nid))["status"] == "sent"


@pytest.mark.integration
@pytest.mark.parametrize("trusted", [False, True], ids=["any-client", "trusted-proxy"])
async def test_forwarded_proto_and_host_name_the_url_twilio_signed(
    values: dict[str, Any], trusted: bool
) -> None:
    """From a trusted proxy, X-Forwarded-Proto/-Host name the URL Twilio signed. From any
    other client (the attack: replaying a signature made for another host's URL) they are
    ignored, so the signature does not match this server's URL: 403, nothing changes."""
    proxies = ["127.0.0.1"] if trusted else []
    async with running_stack({**values, "trusted_proxies": proxies}) as stack:
        nid, sid = await sent_message(stack, "+447911123208")
        params = callback(sid, "delivered")
        public = "https://herald.example.com" + WEBHOOK_PATH
        response = await post_callback(
            stack,
            params,
            **signed(public, params),
            **{"X-Forwarded-Proto": "https", "X-Forwarded-Host": "herald.example.com"},
        )
        if trusted:
            assert response.status_code == 200, response.text
            assert (await stack.notification(nid))["status"] == "delivered"
        else:
            assert response.status_code == 403, response.text
            assert (await stack.notification(nid))["status"] == "sent"


@pytest.mark.integration
async def test_unknown_message_sid_is_accepted_and_ignored(values: dict[str, Any]) -> None:
    async with running_stack(values, workers=0) as stack:
        params = callback("SM" + "f" * 32, "delivered")
        response = await post_callback(stack, params, **signed(stack.url + WEBHOOK_PATH, params))
        assert response.status_code == 200
        assert response.json() == {"result": "unknown"}
        assert await stack.count(Notification) == 0
