"""FastAPI dependencies: the caller's identity and scope checks."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

from fastapi import Request

from producer.auth import AuthThrottle, AuthThrottled, KeyStore, Principal, check_key
from producer.forwarded import client_address, throttle_subject
from producer.problems import Problem


def auth_subject(request: Request) -> str:
    """What a failed key from this request counts against: the client's address."""
    return throttle_subject(client_address(request))


async def current_principal(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Problem(
            401,
            "Unauthorized",
            "send 'Authorization: Bearer <api key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    keys: KeyStore = request.app.state.keys
    throttle: AuthThrottle = request.app.state.auth_throttle
    try:
        principal = await check_key(keys, throttle, key.strip(), auth_subject(request))
    except AuthThrottled as exc:
        raise Problem(
            429,
            "Too many requests",
            f"too many failed API keys from this address; retry after "
            f"{math.ceil(exc.retry_after_s)} s",
            errors=[{"field": "authorization", "message": "failed-key limit reached"}],
            headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))},
        ) from None
    if principal is None:
        raise Problem(
            401,
            "Unauthorized",
            "unknown or revoked API key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


def require(scope: str) -> Callable[[Request], Awaitable[Principal]]:
    async def dependency(request: Request) -> Principal:
        principal = await current_principal(request)
        if not principal.allows(scope):
            raise Problem(403, "Forbidden", f"this API key lacks the '{scope}' scope")
        return principal

    return dependency
