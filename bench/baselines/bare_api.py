"""Scenario 1 and 3 baseline: a FastAPI send endpoint with nothing but the essentials.

It checks the bearer key, validates a body shaped like Herald's ``SendRequest`` with
pydantic, and publishes it persistent, with a publisher confirm, to the same ``herald``
exchange (so it lands in the same quorum queues) before answering ``202``. What Herald
adds on top (phone-number parsing, the database row and outbox, idempotency) is what the
ratio prices. Run with ``uvicorn bench.baselines.bare_api:app``; settings from
``BENCH_AMQP_URL`` and ``BENCH_API_KEY``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import aio_pika
import orjson
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/herald_bench")
EXPECTED_AUTH = f"Bearer {os.environ.get('BENCH_API_KEY', 'bench-admin-key')}"
DEFAULT_PRIORITY = {"otp": "high", "transactional": "normal", "marketing": "low"}


class SendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: Literal["sms", "email", "push"]
    to: str = Field(min_length=1, max_length=4096)
    category: Literal["otp", "transactional", "marketing"]
    priority: Literal["high", "normal", "low"] | None = None
    subject: str | None = Field(None, max_length=998)
    body: str | None = None
    data: dict[str, Any] | None = None
    expires_in_s: int | None = Field(None, ge=1)
    metadata: dict[str, Any] | None = None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    connection = await aio_pika.connect_robust(AMQP_URL)
    channel = await connection.channel(publisher_confirms=True)
    app.state.exchange = await channel.get_exchange("herald", ensure=False)
    try:
        yield
    finally:
        await connection.close()


app = FastAPI(lifespan=lifespan)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/v1/notifications", status_code=202)
async def send(
    request: Request, payload: SendBody, authorization: str = Header("")
) -> JSONResponse:
    if authorization != EXPECTED_AUTH:
        return JSONResponse({"title": "Unauthorized"}, status_code=401)
    notification_id = uuid.uuid4().hex
    priority = payload.priority or DEFAULT_PRIORITY[payload.category]
    body = orjson.dumps({"id": notification_id, **payload.model_dump(mode="json")})
    await request.app.state.exchange.publish(
        aio_pika.Message(
            body,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=notification_id,
            content_type="application/json",
        ),
        routing_key=f"{payload.channel}.{priority}",
        mandatory=True,
        timeout=5,
    )
    return JSONResponse({"id": notification_id, "status": "accepted"}, status_code=202)
