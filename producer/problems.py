"""RFC 9457 problem+json errors, each naming the fields at fault."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        type_: str = "about:blank",
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors or []
        self.headers = headers or {}
        self.type = type_


class FieldError(Problem):
    """A 422 for one field: the common case of bad input."""

    def __init__(self, field: str, message: str, *, status: int = 422) -> None:
        super().__init__(
            status,
            "Invalid request",
            f"{field}: {message}",
            errors=[{"field": field, "message": message}],
        )


def problem_response(problem: Problem, instance: str | None = None) -> JSONResponse:
    content: dict[str, Any] = {
        "type": problem.type,
        "title": problem.title,
        "status": problem.status,
    }
    if problem.detail:
        content["detail"] = problem.detail
    if instance:
        content["instance"] = instance
    if problem.errors:
        content["errors"] = problem.errors
    return JSONResponse(
        content, status_code=problem.status, headers=problem.headers, media_type=PROBLEM_JSON
    )


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def _message(error: dict[str, Any]) -> str:
    if error.get("type") == "extra_forbidden":
        return "unknown field"
    if error.get("type") == "missing":
        return "is required"
    msg = str(error.get("msg", "is invalid"))
    return msg.removeprefix("Value error, ")


async def on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return problem_response(exc, request.url.path)


async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"field": _field_name(tuple(e["loc"])), "message": _message(e)} for e in exc.errors()]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return problem_response(
        Problem(422, "Invalid request", detail, errors=errors), request.url.path
    )


async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    titles = {401: "Unauthorized", 403: "Forbidden", 404: "Not found", 405: "Method not allowed"}
    problem = Problem(
        exc.status_code,
        titles.get(exc.status_code, "Error"),
        str(exc.detail),
        headers=dict(exc.headers or {}),
    )
    return problem_response(problem, request.url.path)
