"""Readiness checks shared by the API's and the worker's ``/readyz``.

A check is a coroutine function that returns when the part is usable and raises when it is
not; ``run_checks`` turns a set of them into the ``{"name": "ok" | "down: …"}`` answer.
A worker is ready only while every consumer it started is attached to the broker: a
process that is connected but consumes nothing must fail its probe so it gets restarted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import cast

import aiormq
from aio_pika.abc import AbstractQueue
from starlette.responses import JSONResponse

from herald.errors import HeraldError

Check = Callable[[], Awaitable[None]]


class NotConsuming(HeraldError):
    """A consumer this process started is no longer attached to its queue."""


async def run_checks(checks: Mapping[str, Check], *, timeout_s: float = 2.0) -> dict[str, str]:
    """Run every check concurrently, each bounded by ``timeout_s``."""

    async def one(check: Check) -> str:
        try:
            await asyncio.wait_for(check(), timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready", named
            detail = str(exc)
            return f"down: {type(exc).__name__}" + (f": {detail}" if detail else "")
        return "ok"

    results = await asyncio.gather(*(one(check) for check in checks.values()))
    return dict(zip(checks, results, strict=True))


def readiness_response(results: Mapping[str, str]) -> JSONResponse:
    """``200`` when every check said ``ok``, else ``503``; the checks by name either way."""
    ready = all(v == "ok" for v in results.values())
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", "checks": dict(results)},
        status_code=200 if ready else 503,
    )


async def ensure_consuming(consumers: Iterable[tuple[AbstractQueue, str]]) -> None:
    """Raise ``NotConsuming`` unless each (queue, consumer tag) is live on an open channel."""
    missing: list[str] = []
    for queue, tag in consumers:
        channel = queue.channel
        if channel.is_closed:
            missing.append(queue.name)
            continue
        underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
        if tag not in underlay.consumers:
            missing.append(queue.name)
    if missing:
        raise NotConsuming(f"no consumer on {', '.join(sorted(missing))}")
