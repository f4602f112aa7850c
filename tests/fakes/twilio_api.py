"""A local Twilio Messages API: enough of it for the real SDK to talk to.

It checks what Twilio checks (HTTP Basic auth as account SID and auth token, the SID in
the path, the To/From/Body form fields), records every message it accepts, and can be
told to answer with any error of the adapter's tables, ``Retry-After`` included.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import multiprocessing
import socket
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass, field
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from herald.domain import utcnow

#: Not Twilio's: where a test reads what a fake in another process received.
RECEIVED_PATH = "/_fake/received"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server(uvicorn.Server):
    """uvicorn without signal handling: the test process owns its signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class LocalServer:
    """An ASGI app on 127.0.0.1 at a free port, served by uvicorn in the test's event
    loop (``start``), or blocking in a process of its own (``run``)."""

    def __init__(self, app: Starlette, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task

    def run(self) -> None:
        self._server.run()


@dataclass(frozen=True, slots=True)
class FakeError:
    """One error answer: HTTP status, Twilio code (``None``: a body without one, as a
    proxy in front of Twilio would send), message and optional ``Retry-After``."""

    status: int
    code: int | None = None
    message: str = "error"
    retry_after: str | None = None


@dataclass(slots=True)
class FakeTwilio:
    account_sid: str
    auth_token: str
    #: Every message accepted, in arrival order: sid, to, from, body, status_callback, …
    received: list[dict[str, Any]] = field(default_factory=list)
    #: Answered one per request, in turn, before anything else.
    errors: deque[FakeError] = field(default_factory=deque)
    #: Answered to every request while set (an outage).
    outage: FakeError | None = None
    delay_s: float = 0.0
    requests: int = 0

    def app(self) -> Starlette:
        routes = [
            Route(
                "/2010-04-01/Accounts/{sid}/Messages.json", self._create_message, methods=["POST"]
            ),
            Route(RECEIVED_PATH, self._received, methods=["GET"]),
        ]
        return Starlette(routes=routes)

    @contextlib.asynccontextmanager
    async def running(self, *, in_process: bool = False) -> AsyncIterator[str]:
        """Serve until the block ends; yields the base URL for the rules' ``endpoint``.

        ``in_process``: serve from a child process, so a load test's event loop (and the
        GIL) carry only the client's work; what it received is copied back at the end.
        """
        if in_process:
            async with self._in_child_process() as url:
                yield url
            return
        server = LocalServer(self.app())
        await server.start()
        try:
            yield server.url
        finally:
            await server.stop()

    @contextlib.asynccontextmanager
    async def _in_child_process(self) -> AsyncIterator[str]:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        child = multiprocessing.get_context("spawn").Process(
            target=_serve_fake, args=(self.account_sid, self.auth_token, port), daemon=True
        )
        child.start()
        try:
            async with httpx.AsyncClient(base_url=url) as client:
                await _wait_until_up(client)
                yield url
                self.received = (await client.get(RECEIVED_PATH)).json()
        finally:
            child.terminate()
            await asyncio.to_thread(child.join, 10)

    def fail_next(self, *errors: FakeError) -> None:
        self.errors.extend(errors)

    def sent_to(self, to: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m["to"] == to]

    async def _received(self, request: Request) -> Response:
        return JSONResponse(self.received)

    async def _create_message(self, request: Request) -> Response:
        self.requests += 1
        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if not self._authorised(request):
            return _error(FakeError(401, 20003, "Authenticate"))
        error = self.errors.popleft() if self.errors else self.outage
        if error is not None:
            return _error(error)
        missing = _missing_field(form)
        if missing is not None:
            return _error(missing)
        return JSONResponse(self._accept(form), status_code=201)

    def _authorised(self, request: Request) -> bool:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return (
            request.headers.get("authorization") == f"Basic {expected}"
            and request.path_params["sid"] == self.account_sid
        )

    def _accept(self, form: dict[str, str]) -> dict[str, Any]:
        sid = f"SM{uuid.uuid4().hex}"
        record = {
            "sid": sid,
            "account_sid": self.account_sid,
            "to": form["To"],
            "from": form.get("From"),
            "messaging_service_sid": form.get("MessagingServiceSid"),
            "body": form["Body"],
            "status_callback": form.get("StatusCallback"),
        }
        self.received.append(record)
        return {
            **record,
            "status": "queued",
            "num_segments": "1",
            "direction": "outbound-api",
            "date_created": format_datetime(utcnow(), usegmt=True),
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
        }


def _serve_fake(account_sid: str, auth_token: str, port: int) -> None:
    """Child-process entry point: a fresh fake, served until terminated."""
    LocalServer(FakeTwilio(account_sid, auth_token).app(), port=port).run()


async def _wait_until_up(client: httpx.AsyncClient, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await client.get(RECEIVED_PATH)
            return
        except httpx.TransportError:
            assert time.monotonic() < deadline, "fake Twilio process did not start"
            await asyncio.sleep(0.05)


def _missing_field(form: dict[str, str]) -> FakeError | None:
    if not form.get("To"):
        return FakeError(400, 21604, "A 'To' phone number is required.")
    if not form.get("From") and not form.get("MessagingServiceSid"):
        return FakeError(400, 21603, "A 'From' phone number is required.")
    if not form.get("Body"):
        return FakeError(400, 21602, "Message body is required.")
    return None


def _error(error: FakeError) -> Response:
    headers = {"Retry-After": error.retry_after} if error.retry_after else None
    if error.code is None:
        return PlainTextResponse("upstream error", status_code=error.status, headers=headers)
    body = {
        "code": error.code,
        "message": error.message,
        "more_info": f"https://www.twilio.com/docs/errors/{error.code}",
        "status": error.status,
    }
    return JSONResponse(body, status_code=error.status, headers=headers)
