"""The web console at ``/console``: server-rendered pages (Jinja2 + htmx, no build step)
over the same services as the API, behind an API-key sign-in and the API's scopes."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from config.settings import Settings
from dlq.console import audit_page, dead_letters, home, providers, routing, signin
from dlq.console.session import SessionCodec
from dlq.console.web import ConsoleRefused, SignInRequired, go, render, sign_in_url
from herald.signing import CursorCodec, console_key

STATIC = Path(__file__).parent / "static"


async def _on_sign_in_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequired)
    return go(request, sign_in_url(exc.next_path))


async def _on_refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ConsoleRefused)
    return render(request, "refused.html", None, status=exc.status, message=exc.message)


def install(app: FastAPI, settings: Settings) -> None:
    """Mount the console's pages and static files on the API's app, with the keys that
    sign what clients bring back: session cookies and (for the API too) paging cursors."""
    key = console_key(settings)
    app.state.console_codec = SessionCodec(
        key, max_age_s=int(settings.console_session_hours * 3600)
    )
    app.state.cursors = CursorCodec(key)
    app.add_exception_handler(SignInRequired, _on_sign_in_required)
    app.add_exception_handler(ConsoleRefused, _on_refused)
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")
    for module in (signin, home, dead_letters, routing, providers, audit_page):
        app.include_router(module.router)
