"""Fault tests: the broker link of a worker drops while its vendor calls are in progress.

The calls must finish and be recorded (a vendor that already had the request would
otherwise send twice); the lost acks only make RabbitMQ redeliver, and the copies find
the outcome recorded. (Consumers coming back after a cut: tests/test_reconnect.py.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.stack import (
    HeraldProcess,
    Stack,
    WorkerProcess,
    free_port,
    queue_depths,
    running_stack,
)
from tests.support.tcpproxy import TcpProxy
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.fault]

SMS = {"channel": "sms", "to": "+447911123456", "category": "transactional", "body": "Hi"}
IN_FLIGHT = 20
VENDOR_LATENCY_MS = 4000


def behind(proxy: TcpProxy, values: dict[str, Any]) -> dict[str, Any]:
    """The same settings with the broker reached through ``proxy``."""
    direct = "127.0.0.1:5672"
    assert direct in values["amqp_url"]
    return {**values, "amqp_url": values["amqp_url"].replace(direct, f"127.0.0.1:{proxy.port}")}


async def started(values: dict[str, Any], proxy: TcpProxy, log: Path) -> HeraldProcess:
    """A ``herald worker`` behind ``proxy``, once its /readyz says every consumer is on
    (a cut during start-up is another story: the process exits and is restarted)."""
    worker = WorkerProcess(behind(proxy, values), log).start()
    url = f"http://127.0.0.1:{values['metrics_port']}/readyz"

    async def ready() -> bool:
        async with httpx.AsyncClient() as plain:
            try:
                return (await plain.get(url)).status_code == 200
            except httpx.TransportError:
                return False

    await wait_until(ready, timeout=60)
    return worker


async def calls_in_progress(stack: Stack) -> list[str]:
    """Send ``IN_FLIGHT`` messages and wait until every one is in its vendor call."""
    responses = await asyncio.gather(*(stack.send(**SMS) for _ in range(IN_FLIGHT)))
    assert {r.status_code for r in responses} == {202}
    ids = [r.json()["id"] for r in responses]

    async def all_sending() -> bool:
        return set((await stack.statuses(ids)).values()) == {"sending"}

    await wait_until(all_sending)
    return ids


async def test_a_broker_cut_during_vendor_calls_cancels_none_and_sends_each_once(
    settings_for: Any, tmp_path: Path
) -> None:
    """The attack of issue 11 finding 4: one worker's link cut 1 s into 4 s vendor calls,
    another worker ready to take the redelivered copies. Before, the 20 calls were
    cancelled (``unknown``) and sent again by the other worker; now each call finishes,
    is recorded ``sent``, and the vendor gets each message once."""
    values = settings_for(worker_prefetch=50, provider_timeout_s=10, metrics_port=free_port())
    proxy = await TcpProxy("127.0.0.1", 5672).start()
    try:
        async with running_stack(values, workers=0) as stack:
            await stack.set_sandbox("sandbox-sms", "ok", latency_ms=VENDOR_LATENCY_MS)
            log = tmp_path / "worker-cut.log"
            cut_worker = await started(values, proxy, log)
            try:
                ids = await calls_in_progress(stack)
                await asyncio.sleep(1)  # the scenario: the cut comes 1 s into the calls
                proxy.cut()
                await stack.start_worker()  # RabbitMQ hands it the copies the cut requeued
                statuses = await stack.wait_all_terminal(ids, timeout=60)
                proxy.heal()

                async def drained() -> bool:
                    return not any((await queue_depths(stack.settings)).values())

                await wait_until(drained)
                copies = await stack.sandbox_copies(ids)
                history = await stack.attempt_outcomes(ids)
            finally:
                cut_worker.close()
    finally:
        await proxy.stop()

    twice = [nid for nid, n in copies.items() if n > 1]
    print(f"\nbroker cut mid-call: {len(twice)} of {IN_FLIGHT} received twice")
    assert set(statuses.values()) == {"sent"}
    assert all(h == ["sent"] for h in history.values()), history
    assert set(copies.values()) == {1}
    # The calls outlived their channel: their acks had nowhere to go.
    assert '"event": "ack_failed"' in log.read_text(), "the cut came mid-delivery"


async def test_sigterm_after_a_broker_cut_still_waits_for_the_calls_in_progress(
    settings_for: Any, tmp_path: Path
) -> None:
    """The consumer callbacks are gone with the channel, but the deliveries are not: a
    SIGTERM waits for them within the grace, records each, and exits 0."""
    values = settings_for(
        worker_prefetch=50, provider_timeout_s=10, shutdown_grace_s=20, metrics_port=free_port()
    )
    proxy = await TcpProxy("127.0.0.1", 5672).start()
    try:
        async with running_stack(values, workers=0) as stack:
            await stack.set_sandbox("sandbox-sms", "ok", latency_ms=VENDOR_LATENCY_MS)
            log = tmp_path / "worker.log"
            worker = await started(values, proxy, log)
            try:
                ids = await calls_in_progress(stack)
                proxy.cut()
                # Off the loop: this process's API may hold SQLite's write lock meanwhile.
                assert await asyncio.to_thread(worker.terminate, 30) == 0
                statuses = await stack.statuses(ids)
                history = await stack.attempt_outcomes(ids)
                copies = await stack.sandbox_copies(ids)
            finally:
                worker.close()
    finally:
        await proxy.stop()

    assert set(statuses.values()) == {"sent"}, "every call in progress was finished"
    assert all(h == ["sent"] for h in history.values()), history
    assert set(copies.values()) == {1}
