"""``POST /v1/notifications`` and ``GET /v1/notifications/{id}``."""

from __future__ import annotations

import dataclasses
import math
import time
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from sqlalchemy import select

from herald import metrics
from herald.domain import Category, Envelope, utcnow
from herald.storage.models import Attempt, Notification
from producer.accept import Accepted, AcceptService, request_fingerprint
from producer.auth import Principal
from producer.deps import require
from producer.problems import Problem
from producer.ratelimits import (
    PUMPING_POLICIES,
    check_destination,
    enforce,
    otp_checks,
    send_checks,
)
from producer.validation import (
    Limits,
    SendRequest,
    ValidSend,
    check_idempotency_key,
    validate_send,
)
from router.select import plan

router = APIRouter(prefix="/v1/notifications", tags=["notifications"])


@router.post("", status_code=202)
async def send_notification(
    request: Request,
    payload: SendRequest,
    principal: Annotated[Principal, Depends(require("send"))],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JSONResponse:
    """Accept a notification for delivery. A ``202`` means it is stored durably."""
    started = time.perf_counter()
    settings = request.app.state.settings
    if payload.category is Category.OTP and not principal.allows("otp"):
        raise Problem(
            403,
            "Forbidden",
            "category 'otp' needs the 'otp' scope",
            errors=[{"field": "category", "message": "'otp' needs an API key with the otp scope"}],
        )
    key = check_idempotency_key(idempotency_key) if idempotency_key is not None else None
    valid = validate_send(
        payload, Limits(settings.max_body_chars, settings.max_metadata_bytes), utcnow()
    )
    fingerprint = request_fingerprint(payload.model_dump(mode="json")) if key else None
    service: AcceptService = request.app.state.accept
    if key is not None and fingerprint is not None:
        # A replay sends nothing: answer it before any limit is spent.
        previous = await service.previous(principal.id, key, fingerprint)
        if previous is not None:
            return _accepted_response(previous, {})
    country = valid.country
    check_destination(settings, valid.channel, country=country)
    checks = send_checks(settings, principal, valid.channel, valid.to, country=country)
    if valid.category is Category.OTP:  # a caller's own OTP: the OTP pumping limits too
        checks += [
            c
            for c in otp_checks(settings, valid.channel, valid.to, country=country)
            if c.policy in PUMPING_POLICIES
        ]
    limit_headers = await enforce(request.app.state.guard, checks)
    await request.app.state.spend.charge(principal, estimated_cost(request, valid))
    if valid.category is Category.OTP:
        valid = await hold_otp_text(request, valid)
    accepted = await service.accept(principal, valid, idempotency_key=key, fingerprint=fingerprint)
    metrics.ACCEPT_LATENCY.observe(time.perf_counter() - started)
    return _accepted_response(accepted, limit_headers)


async def hold_otp_text(request: Request, valid: ValidSend) -> ValidSend:
    """A caller's own OTP carries its code in the body (and maybe the subject): keep them
    in Redis only, until the message expires (``expires_in_s``, default HERALD_OTP_TTL_S
    after its ``send_at`` or now), and queue a message that names them, as ``POST /v1/otp``
    does."""
    settings = request.app.state.settings
    now = utcnow()
    default_expiry = (valid.send_at or now) + timedelta(seconds=settings.otp_ttl_s)
    expires_at = valid.expires_at or default_expiry
    ttl_s = max(1, math.ceil((expires_at - now).total_seconds()))
    try:
        otp_id = await request.app.state.otp.hold_message(
            valid.channel, valid.to, body=valid.body, subject=valid.subject, ttl_s=ttl_s
        )
    except RedisError:
        raise Problem(
            503,
            "Service unavailable",
            "OTP messages are kept in Redis, which is unreachable; nothing was accepted",
            headers={"Retry-After": "5"},
        ) from None
    return dataclasses.replace(valid, body=None, subject=None, otp_id=otp_id, expires_at=expires_at)


def _accepted_response(accepted: Accepted, limit_headers: dict[str, str]) -> JSONResponse:
    headers = {"Location": f"/v1/notifications/{accepted.id}", **limit_headers}
    if accepted.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(
        {"id": accepted.id, "status": accepted.status}, status_code=202, headers=headers
    )


def estimated_cost(request: Request, valid: ValidSend) -> float:
    """What the cheapest provider the rules would pick charges for this message."""
    message = Envelope(
        id="estimate",
        channel=valid.channel,
        to=valid.to,
        category=valid.category,
        priority=valid.priority,
        country=valid.country,
    )
    route = plan(request.app.state.rules_source.current(), message)
    return route.order[0].cost if route.order else 0.0


@router.get("/{notification_id}")
async def get_notification(
    request: Request,
    notification_id: str,
    principal: Annotated[Principal, Depends(require("send"))],
) -> dict[str, Any]:
    """Status, timestamps and every delivery attempt of one notification."""
    async with request.app.state.readers() as session:  # never waits for the write lock
        row = await session.get(Notification, notification_id)
        if row is None or (row.api_key_id != principal.id and not principal.allows("admin")):
            raise Problem(404, "Not found", f"no notification {notification_id}")
        attempts = (
            (
                await session.execute(
                    select(Attempt)
                    .where(Attempt.notification_id == notification_id)
                    .order_by(Attempt.id)
                )
            )
            .scalars()
            .all()
        )
    return {
        "id": row.id,
        "status": row.status,
        "channel": row.channel,
        "category": row.category,
        "priority": row.priority,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
        "send_at": row.send_at.isoformat() if row.send_at else None,
        "generation": row.generation,
        "rules_version": row.rules_version,
        "last_error": row.last_error,
        "last_error_code": row.last_error_code,
        "attempts": [
            {
                "attempt": a.attempt_no,
                "provider": a.provider,
                "outcome": a.outcome,
                "error": a.error,
                "error_code": a.error_code,
                "started_at": a.started_at.isoformat(),
                "latency_ms": a.latency_ms,
            }
            for a in attempts
        ],
    }
