"""A local MSG91 Flow API (``POST /api/v5/flow``): checks the ``authkey`` header and the
request body, records what it accepts, and can answer with any error of the adapter's
tables (``{"type": "error", "code", "message"}`` with any HTTP status, or a bare status
as a gateway would send)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.fakes.twilio_api import LocalServer


@dataclass(frozen=True, slots=True)
class Msg91Error:
    """An error answer; ``code=None`` is a bare HTTP status (no MSG91 body)."""

    status: int
    code: str | None = None
    message: str = "error"
    retry_after: str | None = None


@dataclass(slots=True)
class FakeMsg91:
    auth_key: str
    #: Every accepted request: request_id, template_id, sender, and its one recipient.
    received: list[dict[str, Any]] = field(default_factory=list)
    errors: deque[Msg91Error] = field(default_factory=deque)
    outage: Msg91Error | None = None
    delay_s: float = 0.0
    requests: int = 0

    def app(self) -> Starlette:
        routes = [
            Route(path, self._flow, methods=["POST"]) for path in ("/api/v5/flow", "/api/v5/flow/")
        ]
        return Starlette(routes=routes)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        server = LocalServer(self.app())
        await server.start()
        try:
            yield server.url
        finally:
            await server.stop()

    def fail_next(self, *errors: Msg91Error) -> None:
        self.errors.extend(errors)

    async def _flow(self, request: Request) -> Response:
        self.requests += 1
        raw = await request.body()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if request.headers.get("authkey") != self.auth_key:
            return _error(Msg91Error(401, "207", "Invalid authkey"))
        error = self.errors.popleft() if self.errors else self.outage
        if error is not None:
            return _error(error)
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _error(Msg91Error(400, None))
        invalid = _invalid(payload)
        if invalid is not None:
            return _error(invalid)
        request_id = uuid.uuid4().hex[:24]
        [recipient] = payload["recipients"]
        self.received.append(
            {
                "request_id": request_id,
                "template_id": payload["template_id"],
                "sender": payload.get("sender"),
                **recipient,
            }
        )
        return JSONResponse({"type": "success", "message": request_id})


def _invalid(payload: Any) -> Msg91Error | None:
    if not isinstance(payload, dict) or not payload.get("template_id"):
        return Msg91Error(400, "102", "template_id missing")
    recipients = payload.get("recipients")
    if not isinstance(recipients, list) or len(recipients) != 1:
        return Msg91Error(400, "101", "recipients missing")
    mobiles = str(recipients[0].get("mobiles", ""))
    if not mobiles.isdigit() or len(mobiles) < 10:
        return Msg91Error(400, "202", "invalid mobile number")
    return None


def _error(error: Msg91Error) -> Response:
    headers = {"Retry-After": error.retry_after} if error.retry_after else None
    if error.code is None:
        return PlainTextResponse("gateway error", status_code=error.status, headers=headers)
    body = {"type": "error", "code": error.code, "message": error.message}
    return JSONResponse(body, status_code=error.status, headers=headers)
