"""Sign in with an API key; the key becomes a signed session cookie (HttpOnly,
SameSite=Strict, Secure over HTTPS) holding only the key's id."""

from __future__ import annotations

import hmac
import math
import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, Response

from dlq.console.session import COOKIE, LOGIN_COOKIE, SessionsUnavailable
from dlq.console.web import (
    ConsoleRefused,
    Viewer,
    checked_form,
    codec,
    go,
    render,
    safe_next,
    session_store,
    viewer,
)
from herald.logs import get_logger
from producer.auth import AuthThrottled, check_key
from producer.deps import auth_subject
from producer.forwarded import public_origin

log = get_logger(__name__)
router = APIRouter(prefix="/console")
#: A key needs one of these to see anything in the console.
CONSOLE_SCOPES = ("dlq:read", "routing:read")


def _set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=public_origin(request)[0] == "https",  # as the browser sees it
    )


def _login_page(
    request: Request, next_path: str, *, error: str | None = None, status: int = 200
) -> HTMLResponse:
    token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
    response = render(
        request,
        "login.html",
        None,
        status=status,
        next_path=next_path,
        login_token=token,
        error=error,
    )
    _set_cookie(request, response, LOGIN_COOKIE, token, 3600)
    return response


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
async def login_page(request: Request, next: str | None = None) -> HTMLResponse:
    return _login_page(request, safe_next(next))


@router.post("/login", include_in_schema=False)
async def sign_in(
    request: Request,
    api_key: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/console",
) -> Response:
    expected = request.cookies.get(LOGIN_COOKIE, "")
    next_path = safe_next(next)
    if not expected or not hmac.compare_digest(expected, csrf_token):
        return _login_page(
            request, next_path, error="The sign-in form expired; try again.", status=403
        )
    key = api_key.strip()
    try:
        principal = (
            await check_key(
                request.app.state.keys, request.app.state.auth_throttle, key, auth_subject(request)
            )
            if key
            else None
        )
    except AuthThrottled as exc:
        wait = max(1, math.ceil(exc.retry_after_s))
        log.info("console_sign_in_throttled")
        page = _login_page(
            request,
            next_path,
            error=f"Too many failed sign-ins from your address; try again in {wait} s.",
            status=429,
        )
        page.headers["Retry-After"] = str(wait)
        return page
    if principal is None:
        log.info("console_sign_in_refused")
        return _login_page(request, next_path, error="Unknown or revoked API key.", status=401)
    if not any(principal.allows(scope) for scope in CONSOLE_SCOPES):
        return _login_page(
            request,
            next_path,
            error="This key has none of the scopes the console needs (dlq:read, routing:read).",
            status=403,
        )
    try:
        session = await session_store(request).start(principal.id)
    except SessionsUnavailable:
        return _login_page(
            request, next_path, error="Sign-in is unavailable right now; try again.", status=503
        )
    log.info("console_signed_in", key_name=principal.name)
    response = go(request, next_path)
    max_age = codec(request).max_age_s
    _set_cookie(request, response, COOKIE, codec(request).issue(session), max_age)
    response.delete_cookie(LOGIN_COOKIE, path="/console")
    return response


@router.post("/logout", include_in_schema=False)
async def sign_out(request: Request, seen: Annotated[Viewer, Depends(viewer)]) -> Response:
    await checked_form(request, seen)
    try:
        await session_store(request).end(seen.session)  # the cookie is dead from now on
    except SessionsUnavailable:
        raise ConsoleRefused(503, "Signing out is unavailable right now; try again.") from None
    log.info("console_signed_out", key_name=seen.principal.name)
    response = go(request, "/console/login")
    response.delete_cookie(COOKIE, path="/console")
    return response
