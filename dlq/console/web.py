"""Console plumbing: who is signed in, scope and CSRF checks, and page rendering with the
security headers every console response carries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData

from dlq.console.session import (
    COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    ConsoleSession,
    SessionCodec,
    SessionStore,
    SessionsUnavailable,
)
from producer.auth import KeyStore, Principal

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")

#: Scripts and styles only from this origin, never framed, never cached.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class SignInRequired(Exception):
    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


class ConsoleRefused(Exception):
    """A console request that is not allowed: a missing scope or a bad CSRF token."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Viewer:
    principal: Principal
    session: ConsoleSession
    csrf_token: str

    def can(self, scope: str) -> bool:
        return self.principal.allows(scope)


def codec(request: Request) -> SessionCodec:
    found: SessionCodec = request.app.state.console_codec
    return found


def session_store(request: Request) -> SessionStore:
    return SessionStore(request.app.state.redis, ttl_s=codec(request).max_age_s)


async def live(request: Request, session: ConsoleSession) -> bool:
    """Whether the session is still on record (not signed out); 503 when Redis cannot say."""
    try:
        return await session_store(request).active(session)
    except SessionsUnavailable:
        raise ConsoleRefused(
            503, "The console cannot check sign-ins right now (Redis is unreachable)."
        ) from None


async def viewer(request: Request) -> Viewer:
    """The signed-in key, looked up afresh (a revoked key or an ended session is signed
    out at once)."""
    session = codec(request).read(request.cookies.get(COOKIE))
    keys: KeyStore = request.app.state.keys
    principal = None
    if session is not None and await live(request, session):
        principal = await keys.by_id(session.key_id)
    if session is None or principal is None:
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInRequired(path)
    return Viewer(principal, session, codec(request).csrf_token(session))


def needs(scope: str) -> Any:
    """A dependency: the viewer, if their key has ``scope`` (as the API's ``require``)."""

    async def dependency(request: Request) -> Viewer:
        seen = await viewer(request)
        if not seen.can(scope):
            raise ConsoleRefused(403, f"Your API key lacks the '{scope}' scope for this.")
        return seen

    return dependency


async def checked_form(request: Request, seen: Viewer) -> FormData:
    """The posted form, once its CSRF token (field or htmx header) matches the session."""
    form = await request.form()
    token = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD)
    if not codec(request).csrf_ok(seen.session, str(token) if token else None):
        raise ConsoleRefused(403, "This form has expired or did not come from the console.")
    return form


def is_htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true"


def render(
    request: Request,
    template: str,
    seen: Viewer | None,
    *,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    response = TEMPLATES.TemplateResponse(
        request,
        template,
        {"viewer": seen, "csrf_field": CSRF_FIELD, "csrf_header": CSRF_HEADER, **context},
        status_code=status,
    )
    response.headers.update(SECURITY_HEADERS)
    if is_htmx(request) and not template.startswith("_"):
        # A whole page answering an htmx request (a refusal, a conflict): show its main
        # part in place of the page's, not inside the small element that asked.
        response.headers.update(
            {"HX-Retarget": "main", "HX-Reselect": "main", "HX-Reswap": "outerHTML"}
        )
    return response


def go(request: Request, url: str) -> Response:
    """Redirect after a POST: a 303 for a plain form, ``HX-Redirect`` for htmx."""
    if is_htmx(request):
        response: Response = Response(status_code=204, headers={"HX-Redirect": url})
    else:
        response = RedirectResponse(url, status_code=303)
    response.headers.update(SECURITY_HEADERS)
    return response


def sign_in_url(next_path: str) -> str:
    return f"/console/login?next={quote(next_path, safe='')}"


def safe_next(value: str | None) -> str:
    """Only a console path: never an open redirect to another site."""
    if value and value.startswith("/console") and not value.startswith("//"):
        return value
    return "/console"


def when(value: str | datetime | None) -> str:
    """ISO timestamps as a short UTC time for tables."""
    if value is None:
        return "—"
    at = datetime.fromisoformat(value) if isinstance(value, str) else value
    return at.strftime("%Y-%m-%d %H:%M:%S UTC")


def cost(value: Any) -> str:
    """A provider's cost: one number, or per destination country with a default."""
    if isinstance(value, dict):
        return " · ".join(f"{country} {price:g}" for country, price in value.items())
    return f"{value:g}" if isinstance(value, int | float) else str(value)


TEMPLATES.env.filters["when"] = when
TEMPLATES.env.filters["cost"] = cost
