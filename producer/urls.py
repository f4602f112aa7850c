"""No NUL character in a request's path, query or form body: PostgreSQL refuses U+0000 in
every text parameter, so ``GET /v1/dlq?provider=%00`` or ``GET /v1/notifications/%00``
was a 500 from the database driver (and a console form's reason would have been at the
audit insert). Refused here for every route, naming the parameter. JSON bodies get the
same refusal from ``producer.jsonbody``."""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from producer.limits import replay_body
from producer.problems import FieldError, Problem, printable, problem_response

NUL_MESSAGE = "must not contain a NUL character (%00)"


def url_problem(path: str, query_string: bytes) -> Problem | None:
    """The refusal for a NUL in the (decoded) path or in a query parameter, or ``None``.

    Two substring checks on every request; the query is parsed only when one fails.
    """
    if "\x00" in path:
        return FieldError("path", NUL_MESSAGE, status=400)
    return encoded_problem(query_string, "query")


def encoded_problem(encoded: bytes, where: str) -> Problem | None:
    """A NUL in ``a=1&b=2`` (a query, or a form body), naming the parameter."""
    if b"%00" not in encoded and b"\x00" not in encoded:
        return None
    for name, value in parse_qsl(encoded.decode("latin-1"), keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            return FieldError(printable(name.replace("\x00", "\\x00")) or where, NUL_MESSAGE)
    return None


def _is_form(scope: Scope) -> bool:
    for key, value in scope.get("headers", []):
        if key == b"content-type":
            return bytes(value).split(b";")[0].strip().lower() == FORM
    return False


FORM = b"application/x-www-form-urlencoded"


class StrictUrls:
    """Refuse a NUL in the path, the query or a form body before any route reads it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = url_problem(scope.get("path", ""), scope.get("query_string", b""))
        if problem is None and _is_form(scope):
            message = await receive()  # the size limit outside hands over the whole body
            if message["type"] != "http.request":  # the client went away
                return
            body = message.get("body", b"")
            problem = encoded_problem(body, "body")
            receive = replay_body(body, receive)
        if problem is not None:
            path = printable(scope.get("path", "").replace("\x00", "%00"))
            await problem_response(problem, path)(scope, receive, send)
            return
        await self.app(scope, receive, send)
