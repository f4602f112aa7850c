"""SES delivery events, through an SNS HTTP(S) subscription: ``POST /v1/webhooks/ses``.

SES publishes events of a configuration set to an SNS topic; the topic's HTTPS
subscription posts them here. SNS signs every message: the signature is checked over the
canonical string AWS documents, with the certificate named by ``SigningCertURL``, which
is fetched (then cached) only from ``https://sns.<region>.amazonaws.com`` (or ``.com.cn``).
A subscription is confirmed, and events are applied, only for topics an ``ses`` provider
lists in ``credentials.sns_topic_arns``; the topic tells which provider sent the mail.

Answers: ``200`` for anything handled or deliberately ignored (unknown message, already
final, another event type), so SNS does not retry it; ``403`` for a bad signature or an
untrusted certificate URL, changing nothing; ``503`` when the certificate or the
confirmation URL cannot be fetched now, so SNS retries later.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from fastapi import APIRouter, Request

from herald.logs import get_logger
from producer.problems import Problem
from producer.receipts import ReceiptRecorder, ReceiptResult
from providers.ses import sns_topic_arns
from router.rules import RoutingRules

log = get_logger(__name__)
router = APIRouter(tags=["webhooks"])

#: The only hosts SNS certificates and confirmation URLs come from.
AWS_SNS_HOST: Final = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
#: URL prefixes trusted besides AWS's own, for tests that serve a certificate locally
#: (``"http://127.0.0.1:8123/"``). Empty in production, and nothing outside a test
#: changes it: there is no setting for it on purpose.
EXTRA_TRUSTED_URL_PREFIXES: tuple[str, ...] = ()

#: Fields signed by SNS, in the order of the string to sign, per message type.
SIGNED_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
    "UnsubscribeConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
#: Signature version → digest (1: SHA1withRSA, 2: SHA256withRSA).
DIGESTS: Final[dict[str, type[hashes.HashAlgorithm]]] = {"1": hashes.SHA1, "2": hashes.SHA256}
FETCH_TIMEOUT_S: Final = 5.0
CERT_CACHE_SIZE: Final = 32


def trusted_sns_url(url: str) -> bool:
    """An ``https`` URL on an SNS host, or one of the test-only prefixes."""
    if any(url.startswith(prefix) for prefix in EXTRA_TRUSTED_URL_PREFIXES):
        return True
    parts = urlsplit(url)
    return parts.scheme == "https" and bool(AWS_SNS_HOST.fullmatch(parts.hostname or ""))


def string_to_sign(message: dict[str, Any]) -> bytes:
    """``Key\\nValue\\n`` for each signed field present, in AWS's documented order."""
    fields = SIGNED_FIELDS[message["Type"]]
    return "".join(
        f"{key}\n{message[key]}\n" for key in fields if message.get(key) is not None
    ).encode()


def signature_valid(message: dict[str, Any], key: rsa.RSAPublicKey) -> bool:
    digest = DIGESTS.get(str(message.get("SignatureVersion")))
    if digest is None:
        return False
    try:
        signature = base64.b64decode(message.get("Signature") or "", validate=True)
        key.verify(signature, string_to_sign(message), padding.PKCS1v15(), digest())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


async def _fetch(url: str) -> httpx.Response:
    """One GET to an SNS URL; a client per call, as these are rare (cached certificates,
    one confirmation per subscription) and the API keeps no vendor client of its own."""
    async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=False) as client:
        response = await client.get(url)
    response.raise_for_status()
    return response


class CertificateCache:
    """SNS signing certificates by URL: fetched once, kept while still valid."""

    def __init__(self) -> None:
        self._keys: dict[str, tuple[rsa.RSAPublicKey, datetime]] = {}

    async def public_key(self, url: str) -> rsa.RSAPublicKey:
        cached = self._keys.get(url)
        if cached is not None and cached[1] > datetime.now(UTC):
            return cached[0]
        cert = x509.load_pem_x509_certificate((await _fetch(url)).content)
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError("the SNS signing certificate does not hold an RSA key")
        now = datetime.now(UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise ValueError("the SNS signing certificate is not valid now")
        if len(self._keys) >= CERT_CACHE_SIZE:
            self._keys.clear()
        self._keys[url] = (key, cert.not_valid_after_utc)
        return key


def _certificates(request: Request) -> CertificateCache:
    """The app's certificate cache, made on first use (so app.py needs no wiring)."""
    cache: CertificateCache | None = getattr(request.app.state, "sns_certificates", None)
    if cache is None:
        cache = request.app.state.sns_certificates = CertificateCache()
    return cache


async def _parse(request: Request) -> dict[str, Any]:
    """The SNS envelope (sent as ``text/plain``), with the fields its type signs."""
    try:
        message = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise Problem(400, "Bad request", "the body is not an SNS message (JSON)") from None
    if not isinstance(message, dict) or message.get("Type") not in SIGNED_FIELDS:
        raise Problem(400, "Bad request", "not an SNS message: unknown or missing 'Type'")
    required = [f for f in SIGNED_FIELDS[message["Type"]] if f != "Subject"]
    missing = [f for f in (*required, "Signature", "SigningCertURL") if not message.get(f)]
    if missing:
        raise Problem(
            400,
            "Bad request",
            f"SNS message lacks {', '.join(missing)}",
            errors=[{"field": f, "message": "is required"} for f in missing],
        )
    return message


async def _verify(request: Request, message: dict[str, Any]) -> None:
    """Raise 403 unless SNS signed this exact message (503 if the cert is unreachable)."""
    url = str(message["SigningCertURL"])
    if not trusted_sns_url(url):
        log.warning("sns_untrusted_cert_url", url=url[:200])
        raise Problem(403, "Forbidden", "SigningCertURL is not an Amazon SNS URL")
    try:
        key = await _certificates(request).public_key(url)
    except httpx.HTTPError as exc:
        log.warning("sns_cert_unavailable", url=url[:200], error=repr(exc))
        raise Problem(
            503, "Service unavailable", "cannot fetch the signing certificate now"
        ) from exc
    except ValueError as exc:
        raise Problem(403, "Forbidden", f"unusable signing certificate: {exc}") from exc
    if not signature_valid(message, key):
        log.warning("sns_bad_signature", topic=message.get("TopicArn"))
        raise Problem(403, "Forbidden", "the SNS message signature does not verify")


def _providers_for(request: Request, topic_arn: str) -> list[str]:
    """The ``ses`` providers that list this topic (usually one)."""
    rules: RoutingRules = request.app.state.rules_source.current()
    return [
        name
        for name, spec in rules.providers.items()
        if spec.type == "ses" and topic_arn in sns_topic_arns(name, spec.raw)
    ]


async def _confirm(message: dict[str, Any]) -> dict[str, str]:
    url = str(message["SubscribeURL"])
    if not trusted_sns_url(url):
        raise Problem(403, "Forbidden", "SubscribeURL is not an Amazon SNS URL")
    try:
        await _fetch(url)
    except httpx.HTTPError as exc:
        log.warning("sns_confirmation_failed", topic=message["TopicArn"], error=repr(exc))
        raise Problem(503, "Service unavailable", "cannot confirm the subscription now") from exc
    log.info("sns_subscription_confirmed", topic=message["TopicArn"])
    return {"result": "confirmed"}


@dataclass(frozen=True, slots=True)
class SesOutcome:
    """What an SES event says about one message: delivered, or not and why."""

    message_id: str
    delivered: bool
    error_code: str | None = None
    error: str | None = None


def ses_outcome(event: dict[str, Any]) -> SesOutcome | None:
    """Delivery, a permanent Bounce or a Reject → an outcome; anything else → ``None``.

    Event publishing names the type ``eventType``, identity notifications
    ``notificationType``: both are read. A transient or undetermined bounce is left alone
    (the status stays ``sent``), as is a complaint: the mail was delivered.
    """
    kind = event.get("eventType") or event.get("notificationType")
    message_id = (event.get("mail") or {}).get("messageId")
    if not isinstance(message_id, str) or not message_id:
        return None
    if kind == "Delivery":
        return SesOutcome(message_id, True)
    if kind == "Bounce":
        bounce = event.get("bounce") or {}
        bounce_type = bounce.get("bounceType")
        if bounce_type != "Permanent":
            return None
        recipients = bounce.get("bouncedRecipients") or [{}]
        diagnostic = recipients[0].get("diagnosticCode") or ""
        detail = f"permanent bounce ({bounce.get('bounceSubType', 'General')}) {diagnostic}"
        return SesOutcome(message_id, False, f"bounce:{bounce_type}", detail.strip()[:1000])
    if kind == "Reject":
        reason = (event.get("reject") or {}).get("reason") or "rejected by SES"
        return SesOutcome(message_id, False, "reject", f"SES rejected it: {reason}"[:1000])
    return None


async def _apply(request: Request, message: dict[str, Any]) -> dict[str, str]:
    topic = str(message["TopicArn"])
    providers = _providers_for(request, topic)
    if not providers:
        log.warning("ses_event_unknown_topic", topic=topic)
        return {"result": "ignored"}
    try:
        event = orjson.loads(message["Message"])
    except orjson.JSONDecodeError:
        event = None
    if not isinstance(event, dict):
        log.warning("ses_event_unreadable", topic=topic)
        return {"result": "ignored"}
    outcome = ses_outcome(event)
    if outcome is None:
        kind = event.get("eventType") or event.get("notificationType")
        log.info("ses_event_ignored", kind=kind, topic=topic)
        return {"result": "ignored"}
    recorder: ReceiptRecorder = request.app.state.receipts
    result = ReceiptResult.UNKNOWN
    for provider in providers:
        result = await recorder.apply(
            provider,
            outcome.message_id,
            delivered=outcome.delivered,
            error_code=outcome.error_code,
            error=outcome.error,
        )
        if result is not ReceiptResult.UNKNOWN:
            break
    return {"result": result.value}


@router.post("/v1/webhooks/ses", summary="SES delivery events (an SNS HTTP subscription)")
async def ses_events(request: Request) -> dict[str, str]:
    message = await _parse(request)
    await _verify(request, message)
    kind = message["Type"]
    if kind == "Notification":
        return await _apply(request, message)
    if kind == "SubscriptionConfirmation":
        if not _providers_for(request, str(message["TopicArn"])):
            log.warning("sns_subscription_refused", topic=message["TopicArn"])
            return {"result": "ignored"}
        return await _confirm(message)
    log.warning("sns_unsubscribed", topic=message["TopicArn"])
    return {"result": "ignored"}
