"""SNS (SMS): the error table, the request, the adapter against moto's server, then the
whole pipeline. AWS is faked only at its network boundary (moto's server mode)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from sqlalchemy import select
from structlog.testing import capture_logs

from herald.domain import Category, Channel, Envelope, Priority
from herald.errors import PermanentProviderError, ProviderError, TransientProviderError
from herald.storage.migrate import upgrade
from herald.storage.models import DeadLetter, Notification
from providers import aws
from providers.aws import COMMON_ERRORS, AwsClient, provider_error
from providers.sns import SNS_ERRORS, SnsProvider, publish_params
from tests.conftest import in_thread
from tests.fakes.moto_server import (
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    MotoServer,
    closed_endpoint,
    moto_server,
    silent_endpoint,
)
from tests.support.stack import Stack, running_stack, stack_settings

TO = "+447911123456"
ENV = {
    "HERALD_VENDOR_T_AWS_KEY": ACCESS_KEY_ID,
    "HERALD_VENDOR_T_AWS_SECRET": SECRET_ACCESS_KEY,
    "HERALD_VENDOR_T_AWS_REGION": REGION,
    "HERALD_VENDOR_T_SNS_SENDER": "Herald",
}
CREDENTIALS = {
    "access_key_id": "env:HERALD_VENDOR_T_AWS_KEY",
    "secret_access_key": "env:HERALD_VENDOR_T_AWS_SECRET",
    "region": "env:HERALD_VENDOR_T_AWS_REGION",
    "sender_id": "env:HERALD_VENDOR_T_SNS_SENDER",
}


def sns_spec(endpoint: str, cost: float = 0.0065) -> dict[str, Any]:
    return {
        "type": "sns",
        "channel": "sms",
        "cost": {"default": cost},
        "endpoint": endpoint,
        "credentials": dict(CREDENTIALS),
    }


def sms(body: str = "Your code is 123456", to: str = TO, **extra: Any) -> Envelope:
    fields: dict[str, Any] = {"category": Category.TRANSACTIONAL, **extra}
    return Envelope(
        id="n-1", channel=Channel.SMS, to=to, priority=Priority.NORMAL, body=body, **fields
    )


def client_error(
    code: str, status: int = 400, headers: dict[str, str] | None = None
) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": f"{code} happened"},
        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers or {}},
    }
    return ClientError(response, "Publish")


def classify(exc: BaseException) -> Any:
    return provider_error(exc, SNS_ERRORS, vendor="sns", provider="sns")


# -- the error table, row by row --------------------------------------------------------


@pytest.mark.parametrize(("code", "rule"), sorted({**COMMON_ERRORS, **SNS_ERRORS}.items()))
def test_each_error_code_is_classified_as_its_table_says(code: str, rule: aws.ErrorRule) -> None:
    error = classify(client_error(code))
    expected = PermanentProviderError if rule.permanent else TransientProviderError
    assert type(error) is expected
    assert error.code == code


def test_a_5xx_with_an_unknown_code_is_transient_and_not_reported() -> None:
    with capture_logs() as logs:
        error = classify(client_error("SomethingBroke", status=503))
    assert isinstance(error, TransientProviderError) and error.code == "SomethingBroke"
    assert logs == []


def test_an_unknown_code_is_transient_and_logged_once() -> None:
    code = f"NeverSeenBefore{time.monotonic_ns()}"
    with capture_logs() as logs:
        first, second = classify(client_error(code)), classify(client_error(code))
    assert isinstance(first, TransientProviderError) and isinstance(second, TransientProviderError)
    assert [entry["code"] for entry in logs if entry["event"] == "vendor_error_code_unknown"] == [
        code
    ]


def test_throttling_honours_retry_after() -> None:
    error = classify(client_error("Throttled", headers={"retry-after": "7"}))
    assert isinstance(error, TransientProviderError) and error.retry_after == 7.0
    assert classify(client_error("Throttled")).retry_after is None


@pytest.mark.parametrize(
    ("exc", "kind", "code"),
    [
        (
            EndpointConnectionError(endpoint_url="http://x"),
            TransientProviderError,
            "connection_error",
        ),
        (ReadTimeoutError(endpoint_url="http://x"), TransientProviderError, "timeout"),
        (TimeoutError(), TransientProviderError, "timeout"),
        (NoCredentialsError(), PermanentProviderError, "misconfigured"),
    ],
)
def test_failures_without_an_answer(
    exc: BaseException, kind: type[ProviderError], code: str
) -> None:
    error = classify(exc)
    assert type(error) is kind and error.code == code


# -- the request --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("category", "sms_type"),
    [
        (Category.OTP, "Transactional"),
        (Category.TRANSACTIONAL, "Transactional"),
        (Category.MARKETING, "Promotional"),
    ],
)
def test_publish_sets_the_sms_type_by_category(category: Category, sms_type: str) -> None:
    params = publish_params(sms(category=category))
    assert params["PhoneNumber"] == TO and params["Message"] == "Your code is 123456"
    attributes = params["MessageAttributes"]
    assert attributes["AWS.SNS.SMS.SMSType"] == {"DataType": "String", "StringValue": sms_type}
    assert "AWS.SNS.SMS.SenderID" not in attributes


def test_publish_names_the_sender_id_when_configured() -> None:
    attributes = publish_params(sms(), sender_id="Herald")["MessageAttributes"]
    assert attributes["AWS.SNS.SMS.SenderID"]["StringValue"] == "Herald"


# -- the adapter against moto ----------------------------------------------------------


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with moto_server() as server:
        yield server


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4, thread_name_prefix="vendor") as executor:
        yield executor


def adapter(
    endpoint: str, pool: ThreadPoolExecutor, env: dict[str, str] | None = None
) -> SnsProvider:
    spec = sns_spec(endpoint)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in (ENV if env is None else env).items():
            mp.setenv(key, value)
        return SnsProvider("sns", Channel.SMS, spec, aws=AwsClient("sns", "sns", spec, pool))


async def test_send_publishes_to_moto_and_returns_its_message_id(
    moto: MotoServer, pool: ThreadPoolExecutor
) -> None:
    provider = adapter(moto.url, pool)
    receipt = await provider.send(sms("Hello from Herald"))
    client = provider.aws._client  # made once, on first use
    await provider.send(sms("again"))
    assert client is not None and provider.aws._client is client
    published = (await moto.sms_messages())[receipt.vendor_message_id]
    assert published["phone_number"] == TO and published["message"] == "Hello from Herald"
    await provider.close()


async def test_moto_refusing_the_number_is_permanent(
    moto: MotoServer, pool: ThreadPoolExecutor
) -> None:
    provider = adapter(moto.url, pool)
    with pytest.raises(PermanentProviderError) as caught:
        await provider.send(sms(to="not-a-number"))
    assert caught.value.code == "InvalidParameter"


async def test_connection_refused_is_transient(pool: ThreadPoolExecutor) -> None:
    provider = adapter(closed_endpoint(), pool)
    with pytest.raises(TransientProviderError) as caught:
        await provider.send(sms())
    assert caught.value.code == "connection_error"


async def test_a_hung_vendor_times_out_while_the_event_loop_keeps_running(
    pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aws, "CALL_TIMEOUT_S", 0.5)
    monkeypatch.setattr(aws, "READ_TIMEOUT_S", 1.0)  # frees the pool thread soon after
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    with silent_endpoint() as url:
        provider = adapter(url, pool)
        # Build the boto3 client first: loading its service model holds the GIL for a
        # while, which is start-up cost, not the hung call this test is about.
        await asyncio.to_thread(provider.aws._get)
        ticker = asyncio.create_task(tick())
        started = time.monotonic()
        with pytest.raises(TransientProviderError) as caught:
            await provider.send(sms())
        elapsed = time.monotonic() - started
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
    assert caught.value.code == "timeout"
    assert 0.5 <= elapsed < 5  # the call gave up instead of waiting for the vendor
    assert ticks >= 5  # the loop kept running (a blocked loop would not tick at all)


async def test_a_missing_credential_is_a_permanent_config_error(
    moto: MotoServer, pool: ThreadPoolExecutor
) -> None:
    provider = adapter(moto.url, pool, env={})  # built fine: the worker still starts
    with pytest.raises(PermanentProviderError) as caught:
        await provider.send(sms())
    assert caught.value.code == "misconfigured"
    assert "HERALD_VENDOR_T_AWS_KEY" in str(caught.value)


async def test_a_body_over_ten_segments_never_reaches_sns(pool: ThreadPoolExecutor) -> None:
    provider = adapter(closed_endpoint(), pool)  # a call would fail as transient
    with pytest.raises(PermanentProviderError) as caught:
        await provider.send(sms("x" * 1531))
    assert caught.value.code == "body_too_long"


# -- the whole pipeline ----------------------------------------------------------------


def routing(moto_url: str) -> dict[str, Any]:
    """transactional → sns; otp → sns-down (cheaper, broken) then sns; marketing →
    sns-down alone."""
    return {
        "providers": {
            "sns": sns_spec(moto_url),
            "sns-down": sns_spec(closed_endpoint(), cost=0.001),
        },
        "rules": [
            {
                "name": "otp",
                "match": {"channel": "sms", "category": "otp"},
                "tiers": [["sns-down", "sns"]],
            },
            {
                "name": "marketing",
                "match": {"channel": "sms", "category": "marketing"},
                "tiers": [["sns-down"]],
            },
            {"name": "sms", "match": {"channel": "sms"}, "tiers": [["sns"]]},
        ],
    }


@pytest.fixture(scope="module")
def database(moto: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A migrated SQLite database and the routing file, for the module's one stack."""
    directory = tmp_path_factory.mktemp("sns")
    url = f"sqlite+aiosqlite:///{directory}/herald.db"
    in_thread(upgrade, url)
    routing_file = Path(directory, "routing.yaml")
    routing_file.write_text(yaml.safe_dump(routing(moto.url)))
    return stack_settings(url, routing_file=str(routing_file))


@pytest.fixture(scope="module")
async def stack(database: dict[str, Any]) -> AsyncIterator[Stack]:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in ENV.items():
            mp.setenv(key, value)
        async with running_stack(database) as s:
            yield s


async def send(stack: Stack, category: str, body: str = "Your code is 123456") -> str:
    response = await stack.send(channel="sms", to=TO, category=category, body=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def vendor_id(stack: Stack, nid: str) -> str | None:
    async with stack.sessions() as session:
        return (
            await session.execute(
                select(Notification.vendor_message_id).where(Notification.id == nid)
            )
        ).scalar_one()


async def dead_letter(stack: Stack, nid: str) -> DeadLetter:
    deadline = time.monotonic() + 15
    while True:
        rows = [d for d in await stack.dead_letters() if d.notification_id == nid]
        if rows:
            return rows[0]
        assert time.monotonic() < deadline, f"{nid} never reached the dead-letter store"
        await asyncio.sleep(0.1)


async def test_pipeline_sends_through_sns(stack: Stack, moto: MotoServer) -> None:
    nid = await send(stack, "transactional", "Your parcel is on its way")
    done = await stack.wait_status(nid, "sent")
    assert [(a["provider"], a["outcome"]) for a in done["attempts"]] == [("sns", "sent")]
    message_id = await vendor_id(stack, nid)
    assert message_id is not None
    published = (await moto.sms_messages())[message_id]
    assert published == {
        "message_id": message_id,
        "phone_number": TO,
        "message": "Your parcel is on its way",
    }


async def test_pipeline_permanent_error_fails_at_once_and_is_dead_lettered(
    stack: Stack, moto: MotoServer
) -> None:
    before = len(await moto.sms_messages())
    nid = await send(stack, "transactional", "y" * 2000)  # more than ten segments
    done = await stack.wait_status(nid, "failed")
    assert [(a["outcome"], a["error_code"]) for a in done["attempts"]] == [
        ("permanent_error", "body_too_long")
    ]
    dead = await dead_letter(stack, nid)
    assert (dead.reason, dead.last_error_code, dead.last_provider) == (
        "permanent_error",
        "body_too_long",
        "sns",
    )
    assert len(await moto.sms_messages()) == before


async def test_pipeline_fails_over_to_the_next_provider_of_the_tier(
    stack: Stack, moto: MotoServer
) -> None:
    nid = await send(stack, "otp")
    done = await stack.wait_status(nid, "sent")
    assert [(a["provider"], a["outcome"], a["error_code"]) for a in done["attempts"]] == [
        ("sns-down", "transient_error", "connection_error"),
        ("sns", "sent", None),
    ]
    assert await vendor_id(stack, nid) in await moto.sms_messages()


async def test_pipeline_retries_transient_errors_until_exhausted(stack: Stack) -> None:
    nid = await send(stack, "marketing")
    done = await stack.wait_status(nid, "dead_lettered")
    assert [(a["provider"], a["error_code"]) for a in done["attempts"]] == [
        ("sns-down", "connection_error")
    ] * 4  # the test policy's max_attempts
    dead = await dead_letter(stack, nid)
    assert (dead.reason, dead.last_error_code) == ("exhausted", "connection_error")
