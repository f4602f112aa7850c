"""The FastAPI application: wiring, lifespan and error handlers."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from config.settings import Settings
from dlq import console
from dlq.api import audit_router
from dlq.api import router as dlq_router
from dlq.bulk import BulkReplayer
from dlq.replay import DeadLetters
from herald.logs import get_logger
from herald.monitor import QueueDepthMonitor
from herald.resources import Resources
from producer.accept import AcceptService
from producer.auth import AuthThrottle, KeyStore
from producer.jsonbody import StrictJsonBodies
from producer.limits import BodySizeLimit
from producer.otp import OtpStore
from producer.outbox import Outbox
from producer.problems import (
    Problem,
    declare_problems,
    on_http_error,
    on_problem,
    on_unexpected,
    on_validation_error,
    problem_response,
)
from producer.ratelimits import SpendGuard, limit_of
from producer.receipts import ReceiptRecorder
from producer.routes_health import router as health_router
from producer.routes_notifications import router as notifications_router
from producer.routes_otp import router as otp_router
from producer.routes_providers import router as providers_router
from producer.routes_routing import router as routing_router
from producer.routes_sandbox import router as sandbox_router
from producer.routing_changes import RulesEditor
from producer.urls import StrictUrls
from producer.webhooks import ROUTERS as WEBHOOK_ROUTERS
from providers.sandbox import SandboxStore, warn_if_sandbox_routed
from ratelimit import RedisRateLimiter
from ratelimit.guard import Guard
from router.health import BreakerBoard, breaker_config
from router.rules import RoutingRules
from router.source import RulesSource
from router.store import RulesStore
from router.validation import RulesPolicy
from workers.events import EventPublisher

log = get_logger(__name__)

BOOTSTRAP_KEY_NAME = "bootstrap"


async def on_database_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database_unavailable", path=request.url.path, error=repr(exc))
    problem = Problem(
        503,
        "Service unavailable",
        "the database is unavailable; nothing was accepted, retry later",
        headers={"Retry-After": "5"},
    )
    return problem_response(problem, request.url.path)


#: What a lost or refused database connection raises (asyncpg may surface a bare
#: ConnectionResetError before SQLAlchemy can wrap it).
DATABASE_DOWN: tuple[type[Exception], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    ConnectionError,
)


async def on_dbapi_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, sqlalchemy.exc.DBAPIError)
    if exc.connection_invalidated:
        return await on_database_down(request, exc)
    raise exc


def create_app(settings: Settings, *, run_relay: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resources = await Resources.open(settings, name="herald-api")
        assert resources.publisher is not None
        outbox = Outbox(resources.sessions, resources.publisher, settings)
        outbox.start(relay=run_relay)
        keys = KeyStore(resources.sessions, cache_s=settings.api_key_cache_s)
        keys.listen(resources.redis)
        if settings.bootstrap_api_key is not None:
            await keys.ensure(
                BOOTSTRAP_KEY_NAME, settings.bootstrap_api_key.get_secret_value(), ["admin"]
            )
        rules_store = RulesStore(
            resources.sessions, settings.routing_file, RulesPolicy.from_settings(settings)
        )
        rules_source = RulesSource(rules_store, resources.redis, poll_s=settings.rules_poll_s)
        state = app.state
        state.settings = settings
        state.resources = resources
        state.engine = resources.engine
        state.sessions = resources.sessions
        state.readers = resources.readers  # for handlers that only read
        state.redis = resources.redis
        state.publisher = resources.publisher
        state.keys = keys
        state.auth_throttle = AuthThrottle(
            RedisRateLimiter(resources.redis),
            per_client=limit_of(settings.limit_auth_failures_client),
            overall=limit_of(settings.limit_auth_failures_global),
        )
        state.outbox = outbox
        state.accept = AcceptService(resources.sessions, resources.redis, outbox, settings)
        state.sandbox = SandboxStore.from_settings(resources.redis, settings)
        assert resources.amqp is not None
        state.receipts = ReceiptRecorder(resources.sessions, EventPublisher(resources.amqp))
        state.guard = Guard(RedisRateLimiter(resources.redis))
        state.spend = SpendGuard(resources.redis, settings.spend_cap_per_key_per_day)
        state.otp = OtpStore(resources.redis, settings)
        state.dead_letters = DeadLetters(
            resources.sessions, outbox, settings, rules=rules_source.current
        )
        state.bulk_replayer = BulkReplayer(
            resources.sessions, state.dead_letters, owner=f"{socket.gethostname()}:{os.getpid()}"
        )
        state.bulk_replayer.start()
        state.rules_store = rules_store
        state.rules_source = rules_source
        state.rules_editor = RulesEditor(rules_store, rules_source)
        assert resources.amqp is not None
        state.console_queues = QueueDepthMonitor(resources.amqp)
        state.breakers = BreakerBoard(
            resources.redis, breaker_config(settings), cache_s=settings.breaker_cache_s
        )

        async def track_sandboxes(rules: RoutingRules) -> None:
            state.sandbox_providers = {n for n, p in rules.providers.items() if p.type == "sandbox"}
            warn_if_sandbox_routed(rules, settings)

        rules_source.on_change(track_sandboxes)
        await rules_source.load()
        rules_source.start()
        try:
            yield
        finally:
            await state.bulk_replayer.stop()
            await rules_source.stop()
            await keys.stop()
            await outbox.stop()
            await resources.close()

    app = FastAPI(
        title="Herald",
        version="0.1.0",
        description="Notification and OTP delivery: send API, dead letters, sandbox providers.",
        lifespan=lifespan,
    )
    app.add_middleware(StrictJsonBodies)  # these two run inside the size limit, which
    app.add_middleware(StrictUrls)  # hands them the whole body in one message
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.add_exception_handler(Exception, on_unexpected)
    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    for db_error in DATABASE_DOWN:
        app.add_exception_handler(db_error, on_database_down)
    app.add_exception_handler(sqlalchemy.exc.DBAPIError, on_dbapi_error)
    app.include_router(health_router)
    app.include_router(notifications_router)
    app.include_router(dlq_router)
    app.include_router(audit_router)
    app.include_router(sandbox_router)
    app.include_router(routing_router)
    app.include_router(providers_router)
    app.include_router(otp_router)
    for webhook_router in WEBHOOK_ROUTERS:
        app.include_router(webhook_router)
    console.install(app, settings)
    _document_problems(app)
    return app


def _document_problems(app: FastAPI) -> None:
    """The OpenAPI document declares the problem+json answers every route can give."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = declare_problems(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
