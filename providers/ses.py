"""Amazon SES (API v2, ``sesv2``) for e-mail: ``SendEmail`` with simple content.

Rules entry (docs/vendors/aws.md)::

    ses: {type: ses, channel: email, cost: {default: 0.0001},
          credentials: {from: env:SES_FROM, region: env:SES_REGION,
                        access_key_id: env:AWS_ACCESS_KEY_ID,
                        secret_access_key: env:AWS_SECRET_ACCESS_KEY,
                        configuration_set: env:SES_CONFIGURATION_SET,
                        sns_topic_arns: env:SES_SNS_TOPIC_ARNS}}

``from`` (a verified identity, ``Name <addr>`` allowed) is required. The message's
``subject`` and ``body`` become the subject and the plain-text part; a string in
``data.html`` becomes the HTML part. ``configuration_set`` names the SES configuration
set whose event destination publishes delivery events to SNS; ``sns_topic_arns`` (comma
separated) lists the topics whose events ``POST /v1/webhooks/ses`` accepts for this
provider.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from herald.domain import Channel, Envelope
from herald.errors import PermanentProviderError
from providers.aws import AWS_CALL_ERRORS, AwsClient, ErrorRule, provider_error
from providers.base import BaseProvider, Receipt
from providers.credentials import ENV_PREFIX, MissingCredential, resolve_credentials
from providers.email_message import header_unsafe

if TYPE_CHECKING:
    from providers.registry import ProviderDeps

VENDOR: Final = "ses"

#: SES ``SendEmail`` errors (v2 API reference, and the v1 names some SDK paths still
#: answer with), beyond the common ones in ``providers.aws.COMMON_ERRORS``.
SES_ERRORS: Final[dict[str, ErrorRule]] = {
    "MessageRejected": ErrorRule(
        True, "SES refused the message: unverified sender, or it contains a virus"
    ),
    "MailFromDomainNotVerified": ErrorRule(True, "the custom MAIL FROM domain is not verified"),
    "MailFromDomainNotVerifiedException": ErrorRule(
        True, "the custom MAIL FROM domain is not verified"
    ),
    "AccountSendingPausedException": ErrorRule(True, "sending is paused for the whole account"),
    "SendingPausedException": ErrorRule(
        True, "sending is paused for the account or the configuration set"
    ),
    "AccountSuspendedException": ErrorRule(True, "SES suspended the account's sending"),
    "ConfigurationSetDoesNotExist": ErrorRule(True, "the configuration set does not exist"),
    "ConfigurationSetDoesNotExistException": ErrorRule(
        True, "the configuration set does not exist"
    ),
    "ConfigurationSetSendingPausedException": ErrorRule(
        True, "sending is paused for the configuration set"
    ),
    "NotFoundException": ErrorRule(True, "a named resource (configuration set, ...) is missing"),
    "BadRequestException": ErrorRule(True, "a field of the request is invalid (address, ...)"),
    "InvalidParameterValue": ErrorRule(True, "a field of the request is invalid"),
    "Throttling": ErrorRule(False, "over the sending rate, or the daily quota is used up"),
    "ThrottlingException": ErrorRule(False, "over the account's request rate"),
    "TooManyRequestsException": ErrorRule(False, "over the account's request rate"),
    "LimitExceededException": ErrorRule(False, "over a sending limit of the account for now"),
    "ServiceUnavailable": ErrorRule(False, "SES is temporarily unavailable"),
    "InternalFailure": ErrorRule(False, "an error inside SES"),
}

#: SES takes messages up to 40 MB (v2); the send API's own limit is far lower.
MAX_MESSAGE_CHARS: Final = 40 * 1024 * 1024
#: SES email tags allow letters, digits, ``_`` and ``-`` (a UUID fits).
_TAG_VALUE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
#: Tag carrying Herald's notification id, visible in SES events as ``mail.tags``.
NOTIFICATION_TAG: Final = "herald-notification-id"


def _content(text: str) -> dict[str, str]:
    return {"Data": text, "Charset": "UTF-8"}


def send_email_params(
    message: Envelope, *, from_address: str, configuration_set: str | None = None
) -> dict[str, Any]:
    """The ``SendEmail`` request: SES builds the MIME message (``multipart/alternative``
    when there is an HTML part), its headers and encodings."""
    body: dict[str, Any] = {"Text": _content(message.body or "")}
    html = message.data.get("html")
    if isinstance(html, str) and html:
        body["Html"] = _content(html)
    params: dict[str, Any] = {
        "FromEmailAddress": from_address,
        "Destination": {"ToAddresses": [message.to]},
        "Content": {"Simple": {"Subject": _content(message.subject or ""), "Body": body}},
    }
    if configuration_set:
        params["ConfigurationSetName"] = configuration_set
    if _TAG_VALUE.fullmatch(message.id):
        params["EmailTags"] = [{"Name": NOTIFICATION_TAG, "Value": message.id}]
    return params


def unsafe_for_ses(message: Envelope) -> str | None:
    """Why SES must not get this message (a header that breaks lines, text with no UTF-8
    form), or ``None``. The API refuses such input; a message stored earlier or published
    by hand fails for good here, instead of crashing a worker inside the SDK."""
    for field, value in (("subject", message.subject or ""), ("to", message.to)):
        why = header_unsafe(value)
        if why is not None:
            return f"{field}: {why}"
    html = message.data.get("html")
    for field, text in (("body", message.body or ""), ("data.html", html)):
        if isinstance(text, str):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return f"{field}: has no UTF-8 form (a lone surrogate)"
    return None


def sns_topic_arns(name: str, spec: Mapping[str, Any]) -> frozenset[str]:
    """The SNS topics whose SES events count for this provider (empty when unset).

    Only this one reference is resolved, so the API process needs no AWS keys.
    """
    reference = (spec.get("credentials") or {}).get("sns_topic_arns")
    if not isinstance(reference, str) or not reference.startswith(ENV_PREFIX):
        return frozenset()
    try:
        value = resolve_credentials(name, {"credentials": {"sns_topic_arns": reference}})
    except MissingCredential:
        return frozenset()
    return frozenset(arn for arn in re.split(r"[,\s]+", value["sns_topic_arns"]) if arn)


class SesProvider(BaseProvider):
    type_name = "ses"
    max_body_chars = MAX_MESSAGE_CHARS
    #: A new production SES account may send 14 messages per second.
    default_max_per_s = 14.0

    def __init__(
        self, name: str, channel: Channel, spec: dict[str, Any], *, aws: AwsClient
    ) -> None:
        super().__init__(name, channel, spec)
        self.aws = aws

    @property
    def supports_receipts(self) -> bool:  # type: ignore[override]
        """Receipts come only when SES publishes events (a configuration set) to a topic
        the webhook accepts; without them ``sent`` is the last news (OTP fallback)."""
        return bool(self.aws.options.get("configuration_set")) and bool(
            sns_topic_arns(self.name, self.spec)
        )

    def _params(self, message: Envelope) -> dict[str, Any]:
        self.aws.require()  # a credential problem first: it would also hide `from`
        from_address = self.aws.options.get("from")
        if not from_address:
            raise PermanentProviderError(
                f"{self.name}: credentials.from (the verified sender) is not set",
                code="misconfigured",
            )
        refused = unsafe_for_ses(message)
        if refused is not None:
            raise PermanentProviderError(f"{self.name}: {refused}", code="invalid_message")
        return send_email_params(
            message,
            from_address=from_address,
            configuration_set=self.aws.options.get("configuration_set"),
        )

    async def send(self, message: Envelope) -> Receipt:
        try:
            params = self._params(message)
            answer = await self.aws.call("send_email", **params)
        except AWS_CALL_ERRORS as exc:
            raise provider_error(exc, SES_ERRORS, vendor=VENDOR, provider=self.name) from exc
        return Receipt(provider=self.name, vendor_message_id=str(answer["MessageId"]))

    async def close(self) -> None:
        self.aws.close()


def factory(name: str, channel: Channel, spec: dict[str, Any], deps: ProviderDeps) -> SesProvider:
    """Registry entry: the client shares the process's pool for blocking calls."""
    return SesProvider(name, channel, spec, aws=AwsClient("sesv2", name, spec, deps.blocking))
