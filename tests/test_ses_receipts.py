"""SES delivery events through an SNS HTTP subscription (``POST /v1/webhooks/ses``): the
signature, the subscription handshake, and receipts moving e-mails sent through moto."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import orjson
import pytest
import yaml
from sqlalchemy import select

from herald.storage.migrate import upgrade
from herald.storage.models import Notification
from producer.webhooks import ses as webhook
from producer.webhooks.ses import SesOutcome, ses_outcome, signature_valid, string_to_sign
from tests.conftest import in_thread
from tests.fakes.moto_server import (
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    MotoServer,
    moto_server,
)
from tests.fakes.sns_signing import TOPIC_ARN, SnsSigner, ses_event, sns_signer
from tests.support.stack import Stack, running_stack, stack_settings

SENDER = "noreply@herald.test"
TO = "alice@example.com"
PATH = "/v1/webhooks/ses"
#: The module's default, read before any fixture patches it for the local cert server.
DEFAULT_PREFIXES = webhook.EXTRA_TRUSTED_URL_PREFIXES
OTHER_TOPIC = "arn:aws:sns:us-east-1:123456789012:someone-elses-topic"
ENV = {
    "HERALD_VENDOR_T_AWS_KEY": ACCESS_KEY_ID,
    "HERALD_VENDOR_T_AWS_SECRET": SECRET_ACCESS_KEY,
    "HERALD_VENDOR_T_AWS_REGION": REGION,
    "HERALD_VENDOR_T_SES_FROM": SENDER,
    "HERALD_VENDOR_T_SES_TOPICS": f"{TOPIC_ARN}, arn:aws:sns:eu-west-1:123456789012:spare",
}


# -- the string to sign, the signature, the URLs we fetch ------------------------------


def test_string_to_sign_of_a_notification_follows_aws_order() -> None:
    message = {
        "Type": "Notification",
        "MessageId": "m-1",
        "TopicArn": "arn:t",
        "Subject": "s",
        "Message": "hello\nworld",
        "Timestamp": "2026-01-01T00:00:00.000Z",
        "UnsubscribeURL": "https://x",
    }
    expected = (
        "Message\nhello\nworld\nMessageId\nm-1\nSubject\ns\n"
        "Timestamp\n2026-01-01T00:00:00.000Z\nTopicArn\narn:t\nType\nNotification\n"
    )
    assert string_to_sign(message) == expected.encode()
    del message["Subject"]
    assert b"Subject" not in string_to_sign(message)


def test_string_to_sign_of_a_subscription_confirmation_includes_url_and_token() -> None:
    message = {
        "Type": "SubscriptionConfirmation",
        "MessageId": "m",
        "Token": "tok",
        "TopicArn": "arn:t",
        "Message": "msg",
        "SubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription",
        "Timestamp": "ts",
    }
    assert string_to_sign(message) == (
        b"Message\nmsg\nMessageId\nm\nSubscribeURL\nhttps://sns.us-east-1.amazonaws.com/"
        b"?Action=ConfirmSubscription\nTimestamp\nts\nToken\ntok\nTopicArn\narn:t\n"
        b"Type\nSubscriptionConfirmation\n"
    )


@pytest.fixture(scope="module")
def signer() -> Iterator[SnsSigner]:
    with sns_signer() as s:
        yield s


@pytest.mark.parametrize("version", ["1", "2"])
def test_signatures_of_both_versions_verify(signer: SnsSigner, version: str) -> None:
    key = signer.key.public_key()
    message = signer.notification(ses_event("Delivery", "m-1"), version=version)
    assert signature_valid(message, key)
    assert not signature_valid({**message, "Message": message["Message"] + " "}, key)
    assert not signature_valid({**message, "SignatureVersion": "3"}, key)
    assert not signature_valid({**message, "Signature": "not base64!"}, key)


@pytest.mark.parametrize(
    ("url", "trusted"),
    [
        ("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem", True),
        ("https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem", True),
        ("http://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem", False),
        ("https://sns.us-east-1.amazonaws.com.evil.example/x.pem", False),
        ("https://evil.example/sns.us-east-1.amazonaws.com/x.pem", False),
        ("https://s3.amazonaws.com/x.pem", False),
        ("http://127.0.0.1:8000/cert.pem", False),
    ],
)
def test_only_sns_hosts_over_https_are_trusted_by_default(
    url: str, trusted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert DEFAULT_PREFIXES == ()  # production trusts AWS's hosts only
    monkeypatch.setattr(webhook, "EXTRA_TRUSTED_URL_PREFIXES", DEFAULT_PREFIXES)
    assert webhook.trusted_sns_url(url) is trusted


# -- SES events → outcomes --------------------------------------------------------------


def test_delivery_bounce_and_reject_become_outcomes_the_rest_is_ignored() -> None:
    assert ses_outcome(ses_event("Delivery", "m")) == SesOutcome("m", True)
    bounce = {
        "bounceType": "Permanent",
        "bounceSubType": "NoEmail",
        "bouncedRecipients": [{"emailAddress": TO, "diagnosticCode": "smtp; 550 5.1.1 unknown"}],
    }
    outcome = ses_outcome(ses_event("Bounce", "m", bounce=bounce))
    assert outcome is not None and not outcome.delivered
    assert outcome.error_code == "bounce:Permanent"
    assert outcome.error == "permanent bounce (NoEmail) smtp; 550 5.1.1 unknown"
    rejected = ses_outcome(ses_event("Reject", "m", reject={"reason": "Bad content"}))
    assert rejected == SesOutcome("m", False, "reject", "SES rejected it: Bad content")
    soft = {"bounceType": "Transient", "bounceSubType": "MailboxFull"}
    assert ses_outcome(ses_event("Bounce", "m", bounce=soft)) is None
    assert ses_outcome(ses_event("Complaint", "m", complaint={})) is None
    assert ses_outcome(ses_event("Open", "m")) is None
    notification = {"notificationType": "Delivery", "mail": {"messageId": "m"}}
    assert ses_outcome(notification) == SesOutcome("m", True)  # identity notifications


# -- the webhook, on a running stack ----------------------------------------------------


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with moto_server() as server:
        server.client("sesv2").create_email_identity(EmailIdentity=SENDER)
        yield server


@pytest.fixture(scope="module")
def settings(moto: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("ses-receipts")
    url = f"sqlite+aiosqlite:///{directory}/herald.db"
    in_thread(upgrade, url)
    credentials = {
        "access_key_id": "env:HERALD_VENDOR_T_AWS_KEY",
        "secret_access_key": "env:HERALD_VENDOR_T_AWS_SECRET",
        "region": "env:HERALD_VENDOR_T_AWS_REGION",
        "from": "env:HERALD_VENDOR_T_SES_FROM",
        "sns_topic_arns": "env:HERALD_VENDOR_T_SES_TOPICS",
    }
    routing = {
        "providers": {
            "ses": {
                "type": "ses",
                "channel": "email",
                "cost": {"default": 0.0001},
                "endpoint": moto.url,
                "credentials": credentials,
            }
        },
        "rules": [{"name": "email", "match": {"channel": "email"}, "tiers": [["ses"]]}],
    }
    routing_file = Path(directory, "routing.yaml")
    routing_file.write_text(yaml.safe_dump(routing))
    return stack_settings(url, routing_file=str(routing_file))


@pytest.fixture(scope="module")
async def stack(settings: dict[str, Any], signer: SnsSigner) -> AsyncIterator[Stack]:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in ENV.items():
            mp.setenv(key, value)
        # The test-only way to trust a local certificate server (see the module).
        mp.setattr(webhook, "EXTRA_TRUSTED_URL_PREFIXES", (signer.base_url + "/",))
        async with running_stack(settings) as s:
            yield s


async def sent_email(stack: Stack) -> tuple[str, str]:
    """An e-mail sent through the pipeline to moto: (notification id, SES MessageId)."""
    response = await stack.send(
        channel="email", to=TO, category="transactional", subject="Hi", body="b"
    )
    nid = response.json()["id"]
    await stack.wait_status(nid, "sent")
    async with stack.sessions() as session:
        query = select(Notification.vendor_message_id).where(Notification.id == nid)
        message_id = (await session.execute(query)).scalar_one()
    assert message_id
    return nid, message_id


async def post(stack: Stack, message: dict[str, Any]) -> httpx.Response:
    """As SNS posts: JSON in a text/plain body, the type in a header."""
    return await stack.client.post(
        PATH,
        content=orjson.dumps(message),
        headers={
            "Content-Type": "text/plain; charset=UTF-8",
            "x-amz-sns-message-type": str(message.get("Type")),
        },
    )


async def test_a_delivery_event_marks_the_email_delivered_and_is_published(
    stack: Stack, signer: SnsSigner
) -> None:
    nid, message_id = await sent_email(stack)
    connection = await aio_pika.connect(stack.settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        events = await channel.declare_queue(exclusive=True)
        await events.bind("herald.events", routing_key="delivered.email")
        response = await post(stack, signer.notification(ses_event("Delivery", message_id)))
        assert response.status_code == 200 and response.json() == {"result": "applied"}
        assert (await stack.notification(nid))["status"] == "delivered"
        event = await events.get(timeout=5, fail=True)
        assert event is not None
        body = orjson.loads(event.body)
    assert (body["event"], body["id"], body["provider"]) == ("delivered", nid, "ses")

    again = await post(stack, signer.notification(ses_event("Delivery", message_id)))
    assert again.status_code == 200 and again.json() == {"result": "ignored"}  # already final


async def test_a_permanent_bounce_marks_it_undelivered(stack: Stack, signer: SnsSigner) -> None:
    nid, message_id = await sent_email(stack)
    bounce = {"bounceType": "Permanent", "bounceSubType": "General", "bouncedRecipients": []}
    event = ses_event("Bounce", message_id, bounce=bounce)
    response = await post(stack, signer.notification(event, version="1"))  # SHA1withRSA
    assert response.json() == {"result": "applied"}
    done = await stack.notification(nid)
    assert (done["status"], done["last_error_code"]) == ("undelivered", "bounce:Permanent")


async def test_a_bad_signature_is_refused_and_changes_nothing(
    stack: Stack, signer: SnsSigner
) -> None:
    nid, message_id = await sent_email(stack)
    signed = signer.notification(ses_event("Delivery", message_id))
    forged = {**signed, "Message": orjson.dumps(ses_event("Bounce", message_id)).decode()}
    response = await post(stack, forged)
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert "signature" in response.json()["detail"]

    elsewhere = {**signed, "SigningCertURL": "https://attacker.example/cert.pem"}
    assert (await post(stack, elsewhere)).status_code == 403
    assert (await stack.notification(nid))["status"] == "sent"


async def test_unknown_ids_other_topics_and_other_events_are_accepted_and_ignored(
    stack: Stack, signer: SnsSigner
) -> None:
    unknown = await post(stack, signer.notification(ses_event("Delivery", "no-such-id")))
    assert unknown.status_code == 200 and unknown.json() == {"result": "unknown"}

    nid, message_id = await sent_email(stack)
    other = signer.notification(ses_event("Delivery", message_id), topic=OTHER_TOPIC)
    assert (await post(stack, other)).json() == {"result": "ignored"}
    complaint = signer.notification(ses_event("Complaint", message_id, complaint={}))
    assert (await post(stack, complaint)).json() == {"result": "ignored"}
    assert (await stack.notification(nid))["status"] == "sent"


async def test_a_subscription_is_confirmed_only_for_a_listed_topic(
    stack: Stack, signer: SnsSigner
) -> None:
    confirmation = signer.subscription_confirmation()
    response = await post(stack, confirmation)
    assert response.status_code == 200 and response.json() == {"result": "confirmed"}
    assert f"/confirm?Token={confirmation['Token']}" in signer.requests

    foreign = signer.subscription_confirmation(topic=OTHER_TOPIC)
    assert (await post(stack, foreign)).json() == {"result": "ignored"}
    assert f"/confirm?Token={foreign['Token']}" not in signer.requests


async def test_a_body_that_is_not_an_sns_message_is_a_400(stack: Stack) -> None:
    assert (await stack.client.post(PATH, content=b"hello")).status_code == 400
    response = await post(stack, {"Type": "Notification", "Message": "{}"})
    assert response.status_code == 400
    assert {e["field"] for e in response.json()["errors"]} >= {"Signature", "TopicArn"}
