"""Accept -> provider call latency, per notification, for Herald and the bare chain.

Herald: the sandbox record's ``sent_at`` (written in the worker when the provider
"sends") minus the client's wall-clock time just before it wrote the request, with the
stages in between read from the notification (row created, attempt started). Bare
chain: the time the baseline consumer handled the message (the value of its Redis key)
minus the same client send time.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import httpx

from bench.config import API_KEY
from bench.context import NOTIFICATIONS, Context, Server
from bench.measure import latency_summary, wait_for


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def accepted(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if 200 <= r["status"] < 300 and r["id"]]


async def provider_latencies(
    ctx: Context,
    api: Server,
    records: list[dict[str, Any]],
    *,
    category: str,
    sent_before: int = 0,
) -> dict[str, Any]:
    """Wait until every accepted notification is sent, then read each one's sandbox
    ``sent_at``; ``sent_before``: notifications of ``category`` sent before this load."""
    ok = accepted(records)
    await wait_for(
        lambda: ctx.infra.count_status("sent", category),
        lambda n: n >= sent_before + len(ok),
        limit_s=120,
        interval=0.2,
        what=f"{category} notifications sent",
    )
    latencies: list[float] = []
    # Where the time goes: client -> row written (API), row -> worker picked it up
    # (commit, publish, broker, the worker's own queueing), pick-up -> provider call.
    stages: dict[str, list[float]] = {"api": [], "to_worker": [], "in_worker": []}
    missing = 0
    gate = asyncio.Semaphore(8)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=api.url, headers=headers, timeout=10) as client:

        async def one(record: dict[str, Any]) -> None:
            nonlocal missing
            async with gate:
                response = await client.get(
                    "/v1/sandbox/messages", params={"notification_id": record["id"]}
                )
                status = await client.get(f"{NOTIFICATIONS}/{record['id']}")
            response.raise_for_status()
            status.raise_for_status()
            items = response.json()["items"]
            if not items:
                missing += 1
                return
            sent_at = min(_epoch(i["sent_at"]) for i in items)
            latencies.append((sent_at - record["sent_at"]) * 1000)
            notification = status.json()
            if notification["attempts"]:
                created = _epoch(notification["created_at"])
                picked_up = _epoch(notification["attempts"][0]["started_at"])
                stages["api"].append((created - record["sent_at"]) * 1000)
                stages["to_worker"].append((picked_up - created) * 1000)
                stages["in_worker"].append((sent_at - picked_up) * 1000)

        await asyncio.gather(*(one(r) for r in ok))
    return {
        "accepted": len(ok),
        "missing_in_sandbox": missing,
        "accept_to_provider_ms": latency_summary(latencies),
        "stages_ms": {name: latency_summary(values) for name, values in stages.items()},
    }


async def bare_latencies(ctx: Context, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Client send -> the bare consumer handled it, from the consumer's Redis keys (the
    value is its wall clock then); waits until every accepted message was consumed."""
    ok = accepted(records)
    keys = [f"bench:bare:{r['id']}" for r in ok]

    async def consumed() -> list[bytes | str | None]:
        return list(await ctx.infra.redis.mget(keys)) if keys else []

    values = await wait_for(
        consumed, lambda v: all(x is not None for x in v), limit_s=60, what="bare consumed"
    )
    latencies = [
        (float(value) - record["sent_at"]) * 1000
        for record, value in zip(ok, values, strict=True)
        if value is not None
    ]
    return {"accepted": len(ok), "accept_to_consumer_ms": latency_summary(latencies)}
