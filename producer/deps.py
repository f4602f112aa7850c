"""FastAPI dependencies: the caller's identity and scope checks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request

from producer.auth import KeyStore, Principal
from producer.problems import Problem


async def current_principal(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key:
        raise Problem(
            401,
            "Unauthorized",
            "send 'Authorization: Bearer <api key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    keys: KeyStore = request.app.state.keys
    principal = await keys.authenticate(key.strip())
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
