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
        content["detail"] = printable(problem.detail)
    if instance:
        content["instance"] = instance
    if problem.errors:
        content["errors"] = [{k: printable(v) for k, v in e.items()} for e in problem.errors]
    return JSONResponse(
        content, status_code=problem.status, headers=problem.headers, media_type=PROBLEM_JSON
    )


def printable(text: str) -> str:
    """``text`` safe to put in an answer: a lone surrogate (which has no UTF-8 form and
    would turn the answer itself into a 500) shown as its escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return printable(".".join(parts)) or "body"


def _message(error: dict[str, Any]) -> str:
    if error.get("type") == "extra_forbidden":
        return "unknown field"
    if error.get("type") == "missing":
        return "is required"
    msg = str(error.get("msg", "is invalid"))
    return printable(msg.removeprefix("Value error, "))


def _unsupported_media_type(errors: list[Any]) -> bool:
    """FastAPI hands a route the raw bytes when the body is not declared JSON: the model
    then fails on ``body`` itself with those bytes as its input."""
    return any(
        tuple(e.get("loc", ())) == ("body",) and isinstance(e.get("input"), bytes | bytearray)
        for e in errors
    )


async def on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return problem_response(exc, request.url.path)


UNSUPPORTED_MEDIA_TYPE = Problem(
    415,
    "Unsupported media type",
    "send the body as JSON with 'Content-Type: application/json'",
    errors=[{"field": "Content-Type", "message": "must be application/json"}],
)


async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    if _unsupported_media_type(list(exc.errors())):
        return problem_response(UNSUPPORTED_MEDIA_TYPE, request.url.path)
    errors = [{"field": _field_name(tuple(e["loc"])), "message": _message(e)} for e in exc.errors()]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return problem_response(
        Problem(422, "Invalid request", detail, errors=errors), request.url.path
    )


async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    titles = {
        400: "Bad request",
        401: "Unauthorized",
        403: "Forbidden",
        404: "Not found",
        405: "Method not allowed",
        413: "Request too large",
        415: "Unsupported media type",
    }
    problem = Problem(
        exc.status_code,
        titles.get(exc.status_code, "Error"),
        str(exc.detail),
        headers=dict(exc.headers or {}),
    )
    return problem_response(problem, request.url.path)


async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug still answers problem+json (Starlette logs the traceback and re-raises)."""
    problem = Problem(500, "Internal server error", "an unexpected error on the server's side")
    return problem_response(problem, request.url.path)


#: The shape of every error answer, for the OpenAPI document.
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details; ``errors`` names each field at fault.",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}
_PROBLEM_RESPONSE: dict[str, Any] = {
    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
}
_RANGES = {"4XX": "Refused: the problem names each field at fault", "5XX": "Server-side failure"}
_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "patch", "head", "options"})


def declare_problems(schema: dict[str, Any]) -> dict[str, Any]:
    """Every operation answers its errors as problem+json: declare ``4XX`` and ``5XX`` with
    the Problem schema, in place of FastAPI's ``422`` of a shape Herald never sends."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    components["Problem"] = PROBLEM_SCHEMA
    for operations in schema.get("paths", {}).values():
        for method, operation in operations.items():
            if method not in _HTTP_METHODS:
                continue
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status, description in _RANGES.items():
                responses[status] = {"description": description, **_PROBLEM_RESPONSE}
    return schema
