"""``POST /v1/otp`` and ``POST /v1/otp/verify``: send a passcode, check what was typed."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError

from herald.domain import Category, Channel, Priority, utcnow
from herald.otp import TEMPLATES, check_template
from producer.auth import Principal
from producer.deps import require
from producer.otp import IssuedOtp
from producer.problems import FieldError, Problem
from producer.ratelimits import (
    check_destination,
    enforce,
    otp_checks,
    send_checks,
    verify_checks,
)
from producer.routes_notifications import estimated_cost
from producer.validation import StrictInt, ValidSend, normalize_email, parse_phone

router = APIRouter(prefix="/v1/otp", tags=["otp"])


class Fallback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: Literal["sms", "email"]
    to: str = Field(min_length=1, max_length=320)


class OtpRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: str = Field(min_length=1, max_length=320)
    channel: Literal["sms", "email"] = "sms"
    locale: str | None = Field(None, max_length=10)
    template: str | None = Field(None, max_length=500)
    code_length: StrictInt | None = Field(None, ge=4, le=10)
    ttl_s: StrictInt | None = Field(None, ge=1)
    #: Where the same code goes next if this channel fails for good or has not
    #: delivered within HERALD_OTP_FALLBACK_AFTER_S, in order.
    fallback: list[Fallback] = Field(default_factory=list, max_length=2)


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: str = Field(min_length=1, max_length=320)
    code: str = Field(min_length=1, max_length=20)
    channel: Literal["sms", "email"] | None = None


def _recipient(channel: Channel, to: str) -> str:
    return _destination(channel, to)[0]


def _destination(channel: Channel, to: str) -> tuple[str, str | None]:
    """The normalised recipient and, for SMS, the number's region (one parse)."""
    return parse_phone(to) if channel is Channel.SMS else (normalize_email(to), None)


def _recipient_field(channel: Channel, to: str, field: str) -> tuple[Channel, str, str | None]:
    try:
        return (channel, *_destination(channel, to))
    except FieldError as exc:
        raise FieldError(field, exc.errors[0]["message"]) from None


def otp_send(
    channel: Channel,
    to: str,
    issued: IssuedOtp,
    *,
    send_at: datetime | None = None,
    metadata: dict[str, Any] | None = None,
    country: str | None = None,
) -> ValidSend:
    """The message carrying an OTP: high priority, no body (the worker renders the code),
    expiring with the code."""
    return ValidSend(
        channel=channel,
        to=to,
        category=Category.OTP,
        priority=Priority.HIGH,
        subject=None,
        body=None,
        data={},
        metadata=metadata or {},
        expires_at=issued.expires_at,
        send_at=send_at,
        otp_id=issued.otp_id,
        country=country,
    )


async def _queue_fallbacks(
    request: Request,
    principal: Principal,
    issued: IssuedOtp,
    fallbacks: list[tuple[Channel, str, str | None]],
    primary_id: str,
) -> list[str]:
    """Schedule the same code on each fallback channel; a worker skips one that is no
    longer needed, and a permanent failure upstream brings the next one forward."""
    state = request.app.state
    chain = [primary_id]
    for step, (channel, to, country) in enumerate(fallbacks, start=1):
        send_at = utcnow() + timedelta(seconds=step * state.settings.otp_fallback_after_s)
        if send_at >= issued.expires_at:
            break
        valid = otp_send(
            channel, to, issued, send_at=send_at, metadata={"otp_chain": chain[:]}, country=country
        )
        accepted = await state.accept.accept(
            principal, valid, idempotency_key=None, fingerprint=None
        )
        chain.append(accepted.id)
    await state.otp.set_fallbacks(issued.otp_id, chain[1:])
    return chain[1:]


def _redis_down() -> Problem:
    return Problem(
        503,
        "Service unavailable",
        "one-time passcodes need Redis, which is unreachable",
        headers={"Retry-After": "5"},
    )


@router.post("", status_code=202)
async def send_otp(
    request: Request, body: OtpRequest, principal: Annotated[Principal, Depends(require("otp"))]
) -> JSONResponse:
    """Send a passcode (the same code again while it is valid, after the cooldown)."""
    state = request.app.state
    settings = state.settings
    channel = Channel(body.channel)
    to, country = _destination(channel, body.to)
    if body.template is not None:
        try:
            check_template(body.template)
        except ValueError as exc:
            raise FieldError("template", str(exc)) from None
    if body.locale is not None and body.template is None and body.locale not in TEMPLATES:
        raise FieldError("locale", f"no template for {body.locale!r}; one of {sorted(TEMPLATES)}")
    fallbacks = [
        _recipient_field(Channel(f.channel), f.to, f"fallback.{i}.to")
        for i, f in enumerate(body.fallback)
    ]
    ttl_s = body.ttl_s or settings.otp_ttl_s
    if ttl_s > settings.otp_max_ttl_s:
        raise FieldError("ttl_s", f"must be at most {settings.otp_max_ttl_s}")
    check_destination(settings, channel, country=country)
    headers = await enforce(
        state.guard,
        send_checks(settings, principal, channel, to, country=country)
        + otp_checks(settings, channel, to, country=country),
    )
    try:
        issued = await state.otp.issue(
            channel,
            to,
            ttl_s=ttl_s,
            length=body.code_length or settings.otp_code_length,
            template=body.template,
            locale=body.locale,
        )
    except RedisError:
        raise _redis_down() from None
    valid = otp_send(channel, to, issued, country=country)
    await state.spend.charge(principal, estimated_cost(request, valid))
    accepted = await state.accept.accept(principal, valid, idempotency_key=None, fingerprint=None)
    fallback_ids: list[str] = []
    if fallbacks and not issued.resent:
        fallback_ids = await _queue_fallbacks(request, principal, issued, fallbacks, accepted.id)
    resend_after = utcnow() + timedelta(seconds=settings.otp_resend_cooldown_s)
    return JSONResponse(
        {
            "otp_id": issued.otp_id,
            "expires_at": issued.expires_at.isoformat(),
            "resend_after": resend_after.isoformat(),
            "notification_id": accepted.id,
            "resent": issued.resent,
            "fallback_notification_ids": fallback_ids,
        },
        status_code=202,
        headers=headers,
    )


@router.post("/verify")
async def verify_otp(
    request: Request, body: VerifyRequest, principal: Annotated[Principal, Depends(require("otp"))]
) -> JSONResponse:
    """``{valid, attempts_left}``; ``429`` once the attempts are spent, or when the API
    key or the whole service verifies faster than its limit (guessing across many
    recipients). A right code works once. The answer is the same whether or not the
    recipient ever had a code."""
    channel = Channel(body.channel or ("email" if "@" in body.to else "sms"))
    to = _recipient(channel, body.to)
    if not body.code.isdigit():
        raise FieldError("code", "must be digits")
    settings = request.app.state.settings
    headers = await enforce(request.app.state.guard, verify_checks(settings, principal))
    try:
        result = await request.app.state.otp.verify(channel, to, body.code)
    except RedisError:
        raise _redis_down() from None
    if result.locked:
        raise Problem(
            429,
            "Too many attempts",
            "this code can no longer be verified; request a new one",
            errors=[{"field": "code", "message": "too many wrong attempts"}],
            headers={"Retry-After": str(settings.otp_resend_cooldown_s or 1)},
        )
    return JSONResponse(
        {"valid": result.valid, "attempts_left": result.attempts_left}, headers=headers
    )
