"""Amazon SNS for SMS: ``Publish`` straight to a phone number (no topic).

Rules entry (docs/vendors/aws.md)::

    sns: {type: sns, channel: sms, cost: {default: 0.0065},
          credentials: {access_key_id: env:AWS_ACCESS_KEY_ID,
                        secret_access_key: env:AWS_SECRET_ACCESS_KEY,
                        region: env:SNS_REGION, sender_id: env:SNS_SENDER_ID}}

Every credential is optional: without keys boto3's default chain applies. ``sender_id``
is the alphanumeric sender shown where the destination country supports one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from herald.domain import Category, Channel, Envelope
from providers.aws import AWS_CALL_ERRORS, AwsClient, ErrorRule, provider_error
from providers.base import BaseProvider, Receipt
from providers.sms import DEFAULT_MAX_SEGMENTS, check_sms_body

if TYPE_CHECKING:
    from providers.registry import ProviderDeps

VENDOR: Final = "sns"

#: SNS ``Publish`` errors (API reference, "Errors"; SMS guide), beyond the common ones
#: in ``providers.aws.COMMON_ERRORS``. Anything else: 5xx and unknown codes are retried.
SNS_ERRORS: Final[dict[str, ErrorRule]] = {
    "InvalidParameter": ErrorRule(True, "the phone number or a message attribute is invalid"),
    "InvalidParameterValue": ErrorRule(True, "the phone number or the message is invalid"),
    "OptedOut": ErrorRule(True, "the recipient replied STOP: SNS no longer sends to it"),
    "OptedOutException": ErrorRule(True, "the recipient opted out of SMS from this account"),
    "AuthorizationError": ErrorRule(True, "the IAM policy does not allow sns:Publish"),
    "EndpointDisabled": ErrorRule(True, "the destination is disabled"),
    "InvalidSecurity": ErrorRule(True, "the request was not signed as SNS requires"),
    "NotFound": ErrorRule(True, "the destination does not exist"),
    "KMSAccessDenied": ErrorRule(True, "SNS cannot use the KMS key"),
    "KMSDisabled": ErrorRule(True, "the KMS key is disabled"),
    "KMSInvalidState": ErrorRule(True, "the KMS key is not usable"),
    "KMSNotFound": ErrorRule(True, "the KMS key does not exist"),
    "KMSOptInRequired": ErrorRule(True, "the account is not subscribed to KMS"),
    "Throttled": ErrorRule(False, "over the account's SMS rate (TPS) or spend limit for now"),
    "ThrottlingException": ErrorRule(False, "over the account's request rate"),
    "KMSThrottling": ErrorRule(False, "KMS is throttling SNS's requests"),
    "InternalError": ErrorRule(False, "an error inside SNS"),
}

#: SNS sends at most 1,600 bytes per publish; ten segments always fit (1,530 GSM-7
#: characters, or 670 UCS-2 characters = 1,340 bytes).
MAX_SEGMENTS: Final = DEFAULT_MAX_SEGMENTS


def publish_params(message: Envelope, *, sender_id: str | None = None) -> dict[str, Any]:
    """The ``Publish`` request for one SMS: OTPs and transactional messages go as
    ``Transactional`` (SNS's reliable route), marketing as ``Promotional`` (cheaper)."""
    sms_type = "Promotional" if message.category is Category.MARKETING else "Transactional"
    attributes: dict[str, dict[str, str]] = {
        "AWS.SNS.SMS.SMSType": {"DataType": "String", "StringValue": sms_type}
    }
    if sender_id:
        attributes["AWS.SNS.SMS.SenderID"] = {"DataType": "String", "StringValue": sender_id}
    return {
        "PhoneNumber": message.to,
        "Message": message.body or "",
        "MessageAttributes": attributes,
    }


class SnsProvider(BaseProvider):
    type_name = "sns"
    max_body_chars = 1600
    #: SNS's default SMS quota is 20 messages per second per account and region.
    default_max_per_s = 20.0

    def __init__(
        self, name: str, channel: Channel, spec: dict[str, Any], *, aws: AwsClient
    ) -> None:
        super().__init__(name, channel, spec)
        self.aws = aws

    async def send(self, message: Envelope) -> Receipt:
        check_sms_body(message.body or "", MAX_SEGMENTS)
        params = publish_params(message, sender_id=self.aws.options.get("sender_id"))
        try:
            answer = await self.aws.call("publish", **params)
        except AWS_CALL_ERRORS as exc:
            raise provider_error(exc, SNS_ERRORS, vendor=VENDOR, provider=self.name) from exc
        return Receipt(provider=self.name, vendor_message_id=str(answer["MessageId"]))

    async def close(self) -> None:
        self.aws.close()


def factory(name: str, channel: Channel, spec: dict[str, Any], deps: ProviderDeps) -> SnsProvider:
    """Registry entry: the client shares the process's pool for blocking calls."""
    return SnsProvider(name, channel, spec, aws=AwsClient("sns", name, spec, deps.blocking))
