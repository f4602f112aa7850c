"""Twilio status callbacks: ``POST /v1/webhooks/twilio/status``.

Twilio posts a form (``MessageSid``, ``MessageStatus``, ``ErrorCode``, ``AccountSid``…)
to the ``StatusCallback`` URL given at send time, signed in ``X-Twilio-Signature`` with
the account's auth token over the exact URL it called plus the form fields. We check
it with the SDK's ``RequestValidator`` against every Twilio provider of the current
rules whose account SID matches, so a forged receipt changes nothing (``403``).

Behind a TLS-terminating proxy the URL we see is not the one Twilio called:
``X-Forwarded-Proto`` and ``X-Forwarded-Host`` name the public one. They are believed
only from ``HERALD_TRUSTED_PROXIES`` (producer/forwarded.py): from anyone else they would
let a caller replay a signature made for another host's URL.

Receipts for unknown or already-final messages get ``200`` and change nothing, so
Twilio never retries them; interim statuses (queued, sending, sent) are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from starlette.datastructures import ImmutableMultiDict
from twilio.request_validator import RequestValidator

from herald.logs import get_logger
from producer.forwarded import public_origin
from producer.problems import Problem
from producer.receipts import ReceiptRecorder, ReceiptResult
from providers.credentials import MissingCredential, resolve_credentials
from providers.twilio import ERROR_TABLE
from router.rules import RoutingRules

log = get_logger(__name__)

router = APIRouter(tags=["webhooks"])

PATH: Final = "/v1/webhooks/twilio/status"
DELIVERED: Final = frozenset({"delivered", "read"})
NOT_DELIVERED: Final = frozenset({"undelivered", "failed"})


@dataclass(frozen=True, slots=True)
class TwilioAccount:
    provider: str
    account_sid: str
    auth_token: str


def twilio_accounts(rules: RoutingRules) -> list[TwilioAccount]:
    """The Twilio providers of the rules with their credentials; one whose credentials
    are unset is skipped (the rules validation already reported it)."""
    accounts = []
    for name, spec in rules.providers.items():
        if spec.type != "twilio":
            continue
        try:
            credentials = resolve_credentials(name, spec.raw)
        except MissingCredential as exc:
            log.warning("twilio_webhook_credentials_missing", provider=name, error=str(exc))
            continue
        accounts.append(TwilioAccount(name, credentials["account_sid"], credentials["auth_token"]))
    return accounts


def public_url(request: Request) -> str:
    """The URL Twilio called, as it signed it: a trusted proxy's scheme and host if
    forwarded, else the ones this server saw."""
    scheme, host = public_origin(request)
    query = f"?{request.url.query}" if request.url.query else ""
    return f"{scheme}://{host}{request.url.path}{query}"


def signed_by(
    accounts: list[TwilioAccount], url: str, form: ImmutableMultiDict[str, str], signature: str
) -> list[TwilioAccount]:
    """The accounts whose auth token produced this signature (normally exactly one)."""
    if not signature:
        return []
    account_sid = form.get("AccountSid")
    return [
        account
        for account in accounts
        if (account_sid is None or account.account_sid == account_sid)
        and RequestValidator(account.auth_token).validate(url, form, signature)
    ]


@router.post(PATH, summary="Twilio message status callback")
async def twilio_status(request: Request) -> dict[str, str]:
    form = ImmutableMultiDict(
        parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
    )
    accounts = twilio_accounts(request.app.state.rules_source.current())
    signature = request.headers.get("x-twilio-signature", "")
    matched = signed_by(accounts, public_url(request), form, signature)
    if not matched:
        log.warning("twilio_webhook_bad_signature", has_signature=bool(signature))
        raise Problem(403, "Forbidden", "X-Twilio-Signature is missing or does not match")
    status = form.get("MessageStatus") or form.get("SmsStatus") or ""
    sid = form.get("MessageSid") or form.get("SmsSid") or ""
    if status not in DELIVERED | NOT_DELIVERED or not sid:
        return {"result": "ignored"}
    receipts: ReceiptRecorder = request.app.state.receipts
    result = ReceiptResult.UNKNOWN
    for account in matched:  # several providers may share one Twilio account
        result = await receipts.apply(
            account.provider,
            sid,
            delivered=status in DELIVERED,
            error_code=form.get("ErrorCode") or None,
            error=_error_text(status, form.get("ErrorCode")),
        )
        if result is not ReceiptResult.UNKNOWN:
            break
    return {"result": result.value}


def _error_text(status: str, code: str | None) -> str | None:
    """What an undelivered receipt means, from the Twilio error table where we know it."""
    if status in DELIVERED:
        return None
    if code and code.isdigit() and int(code) in ERROR_TABLE:
        return f"Twilio {code}: {ERROR_TABLE[int(code)][1]}"
    return f"Twilio reports the message {status}" + (f" (error {code})" if code else "")
