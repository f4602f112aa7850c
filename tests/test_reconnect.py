"""Fault tests: cut each process's link to RabbitMQ through a TCP proxy, heal it, and check
that every consumer is back (``rabbitmqctl list_consumers``), the backlog drains, dead
letters still reach the console, and readiness said "not ready" while consumers were gone.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from herald import names
from tests.support.stack import (
    ApiProcess,
    HeraldProcess,
    Stack,
    WorkerProcess,
    free_port,
    reset_broker,
    stack_settings,
)
from tests.support.tcpproxy import TcpProxy
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.fault]

SMS = {"channel": "sms", "to": "+447911123456", "category": "transactional", "body": "Hi"}
EMAIL = {
    "channel": "email",
    "to": "ops@example.com",
    "category": "transactional",
    "subject": "Hi",
    "body": "Hi",
}
BROKER = ("127.0.0.1", 5672)
#: aio-pika's robust connection retries every 5 s; allow a few rounds.
RECOVERY_S = 45


class DevProcess(ApiProcess):
    command = "dev"


def consumers(vhost: str) -> Counter[str]:
    """Consumers per queue, as the broker sees them."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_consumers", "-p", vhost, "queue_name"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return Counter(name for name in listed if name.startswith("herald."))


def vhost_of(values: dict[str, Any]) -> str:
    return str(values["amqp_url"]).rsplit("/", 1)[-1]


async def readiness(url: str) -> tuple[int, dict[str, str]]:
    async with httpx.AsyncClient(timeout=5) as client:
        try:
            response = await client.get(f"{url}/readyz")
        except httpx.TransportError:
            return 0, {}
        return response.status_code, response.json().get("checks", {})


@asynccontextmanager
async def proxied(values: dict[str, Any]) -> AsyncIterator[tuple[TcpProxy, dict[str, Any]]]:
    """A proxy to RabbitMQ and the settings that reach the broker through it."""
    proxy = await TcpProxy(*BROKER).start()
    through = str(values["amqp_url"]).replace(
        f"{BROKER[0]}:{BROKER[1]}", f"{BROKER[0]}:{proxy.port}"
    )
    try:
        yield proxy, {**values, "amqp_url": through}
    finally:
        await proxy.stop()


async def send_all(stack: Stack, payload: dict[str, Any], count: int) -> list[str]:
    responses = await asyncio.gather(*(stack.send(**payload) for _ in range(count)))
    assert {r.status_code for r in responses} == {202}, [r.text for r in responses]
    return [r.json()["id"] for r in responses]


async def dead_letter_ids(stack: Stack) -> set[str]:
    response = await stack.client.get("/v1/dlq", params={"limit": 500})
    response.raise_for_status()
    return {item["notification_id"] for item in response.json()["items"]}


def every_queue_consumed(vhost: str, *, workers: int = 1) -> Callable[[], Awaitable[bool]]:
    expected = {name: workers for name in [*names.all_work_queues(), names.DLQ]}

    async def check() -> bool:
        seen = await asyncio.to_thread(consumers, vhost)
        return all(seen[name] >= n for name, n in expected.items())

    return check


async def test_api_and_worker_links_cut_and_healed(settings_for, tmp_path: Path) -> None:
    """Separate ``herald api`` (publisher, outbox relay) and ``herald worker`` (consumers,
    dead-letter ingester), each behind its own proxy; both links cut, then the worker's
    alone with a backlog waiting."""
    values = settings_for()
    vhost = vhost_of(values)
    await reset_broker(Stack(values).settings)
    processes: list[HeraldProcess] = []
    async with (
        proxied(values) as (api_link, api_values),
        proxied(values) as (
            worker_link,
            worker_values,
        ),
    ):
        probe_url = f"http://127.0.0.1:{(probe_port := free_port())}"
        api = ApiProcess(api_values, tmp_path / "api.log").start()
        worker = WorkerProcess({**worker_values, "metrics_port": probe_port}, tmp_path / "w.log")
        processes += [api, worker.start()]
        stack = Stack(values)
        try:
            await api.wait_ready()
            await stack.redis.flushdb()
            await stack.set_sandbox("sandbox-email", "permanent")
            await wait_until(every_queue_consumed(vhost), 30, "the worker consumes")
            assert (await readiness(probe_url))[0] == 200

            # 1. Both links down: accepts stay durable, the worker reports it is not ready.
            api_link.cut()
            worker_link.cut()
            sms = await send_all(stack, SMS, 30)
            emails = await send_all(stack, EMAIL, 4)

            async def worker_not_ready() -> bool:
                status, checks = await readiness(probe_url)
                return status == 503 and checks.get("consumers", "ok") != "ok"

            await wait_until(worker_not_ready, 10, "the worker's /readyz fails while cut")
            api_link.heal()
            worker_link.heal()
            await wait_until(every_queue_consumed(vhost), RECOVERY_S, "consumers come back")
            statuses = await stack.wait_all_terminal(sms, timeout=RECOVERY_S)
            assert set(statuses.values()) == {"sent"}

            async def emails_dead_lettered() -> bool:
                return set(emails) <= await dead_letter_ids(stack)

            await wait_until(emails_dead_lettered, RECOVERY_S, "the ingester stores failures")
            assert (await readiness(probe_url))[0] == 200

            # 2. The worker's link alone: a backlog builds with no consumer, then drains.
            worker_link.cut()
            await wait_until(worker_not_ready, 10, "the worker's /readyz fails while cut")
            backlog = await send_all(stack, SMS, 40)
            more_emails = await send_all(stack, EMAIL, 2)
            worker_link.heal()
            statuses = await stack.wait_all_terminal(backlog, timeout=RECOVERY_S)
            assert set(statuses.values()) == {"sent"}

            async def more_dead_lettered() -> bool:
                return set(more_emails) <= await dead_letter_ids(stack)

            await wait_until(more_dead_lettered, RECOVERY_S, "failures reach /v1/dlq again")
            assert await every_queue_consumed(vhost)()
            copies = await stack.sandbox_copies(sms + backlog)
            assert set(copies.values()) == {1}, "each message delivered exactly once"
        finally:
            for process in processes:
                process.close()
            await stack.close()


async def test_herald_dev_consumes_again_after_a_cut(sqlite_url: str, tmp_path: Path) -> None:
    """The quick start: one ``herald dev`` process, its one link to the broker cut."""
    values = stack_settings(sqlite_url)
    vhost = vhost_of(values)
    await reset_broker(Stack(values).settings)
    async with proxied(values) as (link, dev_values):
        dev = DevProcess(dev_values, tmp_path / "dev.log").start()
        stack = Stack(values)
        url = stack.url
        try:
            await dev.wait_ready()
            await stack.redis.flushdb()
            await wait_until(every_queue_consumed(vhost), 30, "herald dev consumes")
            link.cut()

            async def not_ready() -> bool:
                status, checks = await readiness(url)
                return status == 503 and checks.get("consumers", "ok") != "ok"

            await wait_until(not_ready, 10, "herald dev's /readyz fails while cut")
            ids = await send_all(stack, SMS, 30)
            link.heal()
            await wait_until(every_queue_consumed(vhost), RECOVERY_S, "consumers come back")
            statuses = await stack.wait_all_terminal(ids, timeout=RECOVERY_S)
            assert set(statuses.values()) == {"sent"}
            assert (await readiness(url))[0] == 200
        finally:
            dev.close()
            await stack.close()
