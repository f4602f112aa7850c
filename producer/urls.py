"""No NUL character in a request's path or query: PostgreSQL refuses U+0000 in every text
parameter, so ``GET /v1/dlq?provider=%00`` or ``GET /v1/notifications/%00`` was a 500
from the database driver. Refused here for every route, naming the parameter."""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from producer.problems import FieldError, Problem, printable, problem_response

NUL_MESSAGE = "must not contain a NUL character (%00)"


def url_problem(path: str, query_string: bytes) -> Problem | None:
    """The refusal for a NUL in the (decoded) path or in a query parameter, or ``None``.

    Two substring checks on every request; the query is parsed only when one fails.
    """
    if "\x00" in path:
        return FieldError("path", NUL_MESSAGE, status=400)
    if b"%00" not in query_string and b"\x00" not in query_string:
        return None
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            return FieldError(printable(name.replace("\x00", "\\x00")) or "query", NUL_MESSAGE)
    return None


class StrictUrls:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = url_problem(scope.get("path", ""), scope.get("query_string", b""))
            if problem is not None:
                path = printable(scope.get("path", "").replace("\x00", "%00"))
                await problem_response(problem, path)(scope, receive, send)
                return
        await self.app(scope, receive, send)
