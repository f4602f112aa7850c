"""SES (e-mail, sesv2): the error table, the request, the adapter against moto's server,
then the whole pipeline. AWS is faked only at its network boundary (moto's server mode)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from botocore.exceptions import ClientError
from sqlalchemy import select

from herald.domain import Category, Channel, Envelope, Priority
from herald.errors import PermanentProviderError, TransientProviderError
from herald.storage.migrate import upgrade
from herald.storage.models import DeadLetter, Notification
from producer.auth import KeyStore
from providers.aws import AwsClient, ErrorRule, provider_error
from providers.ses import NOTIFICATION_TAG, SES_ERRORS, SesProvider, send_email_params
from tests.conftest import in_thread
from tests.fakes.moto_server import (
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    MotoServer,
    closed_endpoint,
    moto_server,
)
from tests.support.stack import Stack, running_stack, stack_settings

SENDER = "noreply@herald.test"
UNVERIFIED = "nobody@unverified.test"
TO = "alice@example.com"
ENV = {
    "HERALD_VENDOR_T_AWS_KEY": ACCESS_KEY_ID,
    "HERALD_VENDOR_T_AWS_SECRET": SECRET_ACCESS_KEY,
    "HERALD_VENDOR_T_AWS_REGION": REGION,
    "HERALD_VENDOR_T_SES_FROM": f"Herald <{SENDER}>",
    "HERALD_VENDOR_T_SES_FROM_UNVERIFIED": UNVERIFIED,
}


def ses_spec(
    endpoint: str, cost: float = 0.0001, from_var: str = "HERALD_VENDOR_T_SES_FROM"
) -> dict[str, Any]:
    return {
        "type": "ses",
        "channel": "email",
        "cost": {"default": cost},
        "endpoint": endpoint,
        "credentials": {
            "access_key_id": "env:HERALD_VENDOR_T_AWS_KEY",
            "secret_access_key": "env:HERALD_VENDOR_T_AWS_SECRET",
            "region": "env:HERALD_VENDOR_T_AWS_REGION",
            "from": f"env:{from_var}",
        },
    }


def email(**fields: Any) -> Envelope:
    values: dict[str, Any] = {
        "id": "0190f3a2-1111-7abc-8def-0123456789ab",
        "channel": Channel.EMAIL,
        "to": TO,
        "category": Category.TRANSACTIONAL,
        "priority": Priority.NORMAL,
        "subject": "Your receipt",
        "body": "Thanks for your order.",
        **fields,
    }
    return Envelope(**values)


# -- the error table, row by row --------------------------------------------------------


@pytest.mark.parametrize(("code", "rule"), sorted(SES_ERRORS.items()))
def test_each_error_code_is_classified_as_its_table_says(code: str, rule: ErrorRule) -> None:
    response: Any = {
        "Error": {"Code": code, "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": 400, "HTTPHeaders": {"retry-after": "3"}},
    }
    error = provider_error(
        ClientError(response, "SendEmail"), SES_ERRORS, vendor="ses", provider="ses"
    )
    expected = PermanentProviderError if rule.permanent else TransientProviderError
    assert type(error) is expected and error.code == code
    if not rule.permanent:
        assert isinstance(error, TransientProviderError) and error.retry_after == 3.0


# -- the request --------------------------------------------------------------------------


def test_request_has_subject_text_and_the_sender() -> None:
    params = send_email_params(email(), from_address=SENDER)
    assert params["FromEmailAddress"] == SENDER
    assert params["Destination"] == {"ToAddresses": [TO]}
    simple = params["Content"]["Simple"]
    assert simple["Subject"] == {"Data": "Your receipt", "Charset": "UTF-8"}
    assert simple["Body"] == {"Text": {"Data": "Thanks for your order.", "Charset": "UTF-8"}}
    assert "ConfigurationSetName" not in params
    assert params["EmailTags"] == [{"Name": NOTIFICATION_TAG, "Value": email().id}]


def test_request_adds_the_html_part_and_the_configuration_set() -> None:
    params = send_email_params(
        email(data={"html": "<p>Thanks</p>"}), from_address=SENDER, configuration_set="events"
    )
    body = params["Content"]["Simple"]["Body"]
    assert body["Html"] == {"Data": "<p>Thanks</p>", "Charset": "UTF-8"}
    assert body["Text"]["Data"] == "Thanks for your order."
    assert params["ConfigurationSetName"] == "events"


# -- the adapter against moto ----------------------------------------------------------


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with moto_server() as server:
        server.client("sesv2").create_email_identity(EmailIdentity=SENDER)
        yield server


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4, thread_name_prefix="vendor") as executor:
        yield executor


def adapter(
    spec: dict[str, Any], pool: ThreadPoolExecutor, env: dict[str, str] | None = None
) -> SesProvider:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in (ENV if env is None else env).items():
            mp.setenv(key, value)
        return SesProvider("ses", Channel.EMAIL, spec, aws=AwsClient("sesv2", "ses", spec, pool))


async def test_send_reaches_moto_and_returns_its_message_id(
    moto: MotoServer, pool: ThreadPoolExecutor
) -> None:
    provider = adapter(ses_spec(moto.url), pool)
    receipt = await provider.send(email())
    sent = (await moto.emails())[receipt.vendor_message_id]
    assert sent["source"] == f"Herald <{SENDER}>"
    assert sent["destinations"] == {"ToAddresses": [TO]}
    assert (sent["subject"], sent["body"]) == ("Your receipt", "Thanks for your order.")
    await provider.close()


async def test_an_unverified_sender_is_rejected_for_good(
    moto: MotoServer, pool: ThreadPoolExecutor
) -> None:
    provider = adapter(ses_spec(moto.url, from_var="HERALD_VENDOR_T_SES_FROM_UNVERIFIED"), pool)
    with pytest.raises(PermanentProviderError) as caught:
        await provider.send(email())
    assert caught.value.code == "MessageRejected"


async def test_without_a_sender_it_is_a_permanent_config_error(
    moto: MotoServer, pool: ThreadPoolExecutor
) -> None:
    spec = ses_spec(moto.url)
    del spec["credentials"]["from"]
    with pytest.raises(PermanentProviderError) as caught:
        await adapter(spec, pool).send(email())
    assert caught.value.code == "misconfigured" and "from" in str(caught.value)


async def test_an_unset_credential_is_reported_before_the_sender(
    moto: MotoServer, pool: ThreadPoolExecutor
) -> None:
    with pytest.raises(PermanentProviderError) as caught:
        await adapter(ses_spec(moto.url), pool, env={}).send(email())
    assert caught.value.code == "misconfigured" and "HERALD_VENDOR_T_AWS_KEY" in str(caught.value)


def test_it_claims_receipts_only_with_a_configuration_set_and_a_topic(
    pool: ThreadPoolExecutor,
) -> None:
    spec = ses_spec("http://unused")
    assert not adapter(spec, pool).supports_receipts
    spec["credentials"]["configuration_set"] = "env:HERALD_VENDOR_T_SES_CONFIG_SET"
    spec["credentials"]["sns_topic_arns"] = "env:HERALD_VENDOR_T_SES_TOPICS"
    env = {
        **ENV,
        "HERALD_VENDOR_T_SES_CONFIG_SET": "events",
        "HERALD_VENDOR_T_SES_TOPICS": "arn:aws:sns:x",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        assert adapter(spec, pool, env).supports_receipts


async def test_connection_refused_is_transient(pool: ThreadPoolExecutor) -> None:
    with pytest.raises(TransientProviderError) as caught:
        await adapter(ses_spec(closed_endpoint()), pool).send(email())
    assert caught.value.code == "connection_error"


# -- the whole pipeline ----------------------------------------------------------------

FLAKY_CALLER_KEY = "herald-test-flaky-caller-key"


def routing(moto_url: str) -> dict[str, Any]:
    """transactional → ses; otp → ses-down (cheaper, broken) then ses; marketing → a
    sender SES never verified; the caller ``flaky`` → ses-down alone."""
    return {
        "providers": {
            "ses": ses_spec(moto_url),
            "ses-down": ses_spec(closed_endpoint(), cost=0.00001),
            "ses-unverified": ses_spec(moto_url, from_var="HERALD_VENDOR_T_SES_FROM_UNVERIFIED"),
        },
        "rules": [
            {
                "name": "flaky",
                "match": {"channel": "email", "caller": "flaky"},
                "tiers": [["ses-down"]],
            },
            {
                "name": "otp",
                "match": {"channel": "email", "category": "otp"},
                "tiers": [["ses-down", "ses"]],
            },
            {
                "name": "marketing",
                "match": {"channel": "email", "category": "marketing"},
                "tiers": [["ses-unverified"]],
            },
            {"name": "email", "match": {"channel": "email"}, "tiers": [["ses"]]},
        ],
    }


@pytest.fixture(scope="module")
def settings(moto: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A migrated SQLite database and the routing file, for the module's one stack."""
    directory = tmp_path_factory.mktemp("ses")
    url = f"sqlite+aiosqlite:///{directory}/herald.db"
    in_thread(upgrade, url)
    routing_file = Path(directory, "routing.yaml")
    routing_file.write_text(yaml.safe_dump(routing(moto.url)))
    return stack_settings(url, routing_file=str(routing_file))


@pytest.fixture(scope="module")
async def stack(settings: dict[str, Any]) -> AsyncIterator[Stack]:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in ENV.items():
            mp.setenv(key, value)
        async with running_stack(settings) as s:
            await KeyStore(s.sessions).create("flaky", ["send"], key=FLAKY_CALLER_KEY)
            yield s


async def send(stack: Stack, category: str, **extra: Any) -> str:
    response = await stack.send(
        channel="email", to=TO, category=category, subject="Your receipt", body="Thanks!", **extra
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def vendor_id(stack: Stack, nid: str) -> str | None:
    async with stack.sessions() as session:
        query = select(Notification.vendor_message_id).where(Notification.id == nid)
        return (await session.execute(query)).scalar_one()


async def dead_letter(stack: Stack, nid: str) -> DeadLetter:
    deadline = time.monotonic() + 15
    while True:
        rows = [d for d in await stack.dead_letters() if d.notification_id == nid]
        if rows:
            return rows[0]
        assert time.monotonic() < deadline, f"{nid} never reached the dead-letter store"
        await asyncio.sleep(0.1)


async def test_pipeline_sends_through_ses(stack: Stack, moto: MotoServer) -> None:
    nid = await send(stack, "transactional")
    done = await stack.wait_status(nid, "sent")
    assert [(a["provider"], a["outcome"]) for a in done["attempts"]] == [("ses", "sent")]
    message_id = await vendor_id(stack, nid)
    assert message_id is not None
    sent = (await moto.emails())[message_id]
    assert sent["destinations"] == {"ToAddresses": [TO]}
    assert (sent["source"], sent["subject"], sent["body"]) == (
        f"Herald <{SENDER}>",
        "Your receipt",
        "Thanks!",
    )


async def test_pipeline_sends_the_html_part_from_data(stack: Stack, moto: MotoServer) -> None:
    nid = await send(stack, "transactional", data={"html": "<p>Thanks!</p>"})
    await stack.wait_status(nid, "sent")
    message_id = await vendor_id(stack, nid)
    assert (await moto.emails())[str(message_id)]["body"] == "<p>Thanks!</p>"


async def test_pipeline_rejected_sender_fails_at_once_and_is_dead_lettered(
    stack: Stack,
) -> None:
    nid = await send(stack, "marketing")
    done = await stack.wait_status(nid, "failed")
    assert [(a["provider"], a["outcome"], a["error_code"]) for a in done["attempts"]] == [
        ("ses-unverified", "permanent_error", "MessageRejected")
    ]
    dead = await dead_letter(stack, nid)
    assert (dead.reason, dead.last_error_code, dead.last_provider) == (
        "permanent_error",
        "MessageRejected",
        "ses-unverified",
    )


async def test_pipeline_fails_over_to_the_next_provider_of_the_tier(
    stack: Stack, moto: MotoServer
) -> None:
    nid = await send(stack, "otp")
    done = await stack.wait_status(nid, "sent")
    assert [(a["provider"], a["outcome"], a["error_code"]) for a in done["attempts"]] == [
        ("ses-down", "transient_error", "connection_error"),
        ("ses", "sent", None),
    ]
    assert await vendor_id(stack, nid) in await moto.emails()


async def test_pipeline_retries_transient_errors_until_exhausted(stack: Stack) -> None:
    response = await stack.send(
        channel="email",
        to=TO,
        category="transactional",
        subject="s",
        body="b",
        headers={"Authorization": f"Bearer {FLAKY_CALLER_KEY}"},
    )
    nid = response.json()["id"]
    done = await stack.wait_status(nid, "dead_lettered")
    assert [(a["provider"], a["error_code"]) for a in done["attempts"]] == [
        ("ses-down", "connection_error")
    ] * 4  # the test policy's max_attempts
    dead = await dead_letter(stack, nid)
    assert (dead.reason, dead.last_error_code) == ("exhausted", "connection_error")
