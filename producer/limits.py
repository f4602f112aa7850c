"""Refuse oversized requests (413) before any route parses or streams them."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from producer.problems import Problem, problem_response


class BodySizeLimit:
    """Read the whole body, counting, before the app runs: an oversized one is a 413
    whether it declared a ``Content-Length`` or came chunked, and no route ever sees a
    partial body (an error raised into a route's body read became FastAPI's 400)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._reject(scope, receive, send)
                return
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away mid-body
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, replay_body(b"".join(chunks), receive), send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = Problem(
            413,
            "Request too large",
            f"the request body is larger than {self.max_bytes} bytes",
            errors=[{"field": "body", "message": f"request larger than {self.max_bytes} bytes"}],
        )
        await problem_response(problem, scope.get("path"))(scope, receive, send)


def replay_body(body: bytes, receive: Receive) -> Receive:
    """The buffered body in one message, then the real channel (a later disconnect)."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
