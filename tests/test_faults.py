"""Fault tests: cut RabbitMQ, kill and stop workers, then count what arrived."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import select

from config.settings import DEFAULT_ROUTING_FILE
from herald.storage.models import Attempt
from tests.support.stack import Stack, WorkerProcess, free_port, running_stack
from tests.support.tcpproxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.fault]

SMS = {"channel": "sms", "to": "+447911123456", "category": "transactional", "body": "Hi"}


async def send_many(stack: Stack, count: int, *, chunk: int = 50) -> list[str]:
    ids: list[str] = []
    for start in range(0, count, chunk):
        responses = await asyncio.gather(
            *(stack.send(**SMS) for _ in range(min(chunk, count - start)))
        )
        assert {r.status_code for r in responses} == {202}, [
            r.text for r in responses if r.status_code != 202
        ]
        ids.extend(r.json()["id"] for r in responses)
    return ids


async def wait_until(predicate, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_accepts_while_rabbitmq_is_unreachable_and_delivers_after_it_heals(
    settings_for,
) -> None:
    values = settings_for()
    host, port = "127.0.0.1", 5672
    proxy = await TcpProxy(host, port).start()
    try:
        api_values = {
            **values,
            "amqp_url": values["amqp_url"].replace(f"{host}:{port}", f"{host}:{proxy.port}"),
        }
        async with running_stack(api_values, workers=0) as stack:
            await stack.start_worker(amqp_url=values["amqp_url"])
            proxy.cut()
            await asyncio.sleep(0.2)
            ids = await send_many(stack, 40)  # every one a 202 with the broker out of reach
            await asyncio.sleep(1.5)
            assert set((await stack.statuses(ids)).values()) == {"accepted"}
            proxy.heal()
            statuses = await stack.wait_all_terminal(ids, timeout=60)
            assert set(statuses.values()) == {"sent"}
            copies = await stack.sandbox_copies(ids)
            assert sorted(set(copies.values())) == [1], "each message delivered exactly once"
    finally:
        await proxy.stop()


async def kill_a_worker_mid_flight(
    stack: Stack, tmp_path: Path
) -> tuple[dict[str, str], dict[str, int], int]:
    """500 sends; SIGKILL the worker once 100 are sent; a new worker finishes the rest.

    Returns the final statuses, the sandbox copies and how many were ``sending`` at the kill.
    """
    values = stack.values
    await stack.set_sandbox("sandbox-sms", "ok", latency_ms=20)
    first = WorkerProcess(values, tmp_path / "worker-1.log").start()
    second = WorkerProcess(values, tmp_path / "worker-2.log")
    try:
        ids = await send_many(stack, 500)

        async def some_sent() -> bool:
            return list((await stack.statuses(ids)).values()).count("sent") >= 100

        await wait_until(some_sent, timeout=60)
        first.kill()  # SIGKILL with up to 100 messages prefetched
        in_flight = list((await stack.statuses(ids)).values()).count("sending")
        second.start()
        statuses = await stack.wait_all_terminal(ids, timeout=120)
        copies = await stack.sandbox_copies(ids)
    finally:
        first.close()
        second.close()
    return statuses, copies, in_flight


async def test_a_killed_worker_loses_nothing_and_sends_nothing_twice(
    settings_for, tmp_path: Path
) -> None:
    async with running_stack(settings_for(worker_prefetch=100), workers=0) as stack:
        statuses, copies, in_flight = await kill_a_worker_mid_flight(stack, tmp_path)
    twice = sum(1 for c in copies.values() if c > 1)
    print(f"\nSIGKILL: {in_flight} in 'sending' at the kill, {twice} of 500 received twice")
    assert set(statuses.values()) == {"sent"}
    assert all(c >= 1 for c in copies.values()), "every message reached the sandbox"
    assert twice == 0


async def test_without_a_vendor_lookup_a_duplicate_only_follows_an_interrupted_send(
    settings_for, tmp_path: Path
) -> None:
    """The documented window: a vendor with no lookup API, a worker killed between the
    vendor's answer and our record. Counts the duplicates; each must be visible in the
    attempt history as an ``unknown`` (interrupted) attempt."""
    rules = yaml.safe_load(DEFAULT_ROUTING_FILE.read_text())
    rules["providers"]["sandbox-sms"]["lookup"] = False
    routing = tmp_path / "routing.yaml"
    routing.write_text(yaml.safe_dump(rules))
    values = settings_for(worker_prefetch=100, routing_file=str(routing))
    async with running_stack(values, workers=0) as stack:
        statuses, copies, in_flight = await kill_a_worker_mid_flight(stack, tmp_path)
        twice = [nid for nid, c in copies.items() if c > 1]
        async with stack.sessions() as session:
            interrupted = set(
                (
                    await session.execute(
                        select(Attempt.notification_id).where(Attempt.outcome == "unknown")
                    )
                ).scalars()
            )
    print(
        f"\nSIGKILL without lookup: {in_flight} in 'sending' at the kill, "
        f"{len(interrupted)} interrupted, {len(twice)} of 500 received twice"
    )
    assert set(statuses.values()) == {"sent"}
    assert all(c >= 1 for c in copies.values())
    assert set(twice) <= interrupted
    assert len(twice) <= in_flight


async def test_sigterm_finishes_in_flight_work_then_exits_zero(
    settings_for, tmp_path: Path
) -> None:
    values = settings_for(worker_prefetch=10, metrics_port=free_port())
    async with running_stack(values, workers=0) as stack:
        await stack.set_sandbox("sandbox-sms", "ok", latency_ms=300)
        worker = WorkerProcess(values, tmp_path / "worker.log").start()
        try:
            ids = await send_many(stack, 40)

            async def sending() -> bool:
                return "sending" in (await stack.statuses(ids)).values()

            await wait_until(sending)
            metrics_url = f"http://127.0.0.1:{values['metrics_port']}/metrics"

            async def depth_exported() -> bool:
                async with httpx.AsyncClient() as plain:
                    scraped = (await plain.get(metrics_url)).text
                return 'herald_queue_depth{queue="herald.sms.normal"}' in scraped

            await wait_until(depth_exported, timeout=10)
            started = time.monotonic()
            # Off the loop: this process's API holds SQLite write transactions now and
            # then; a loop blocked in wait() would keep one open and starve the worker.
            assert await asyncio.to_thread(worker.terminate, 30) == 0
            took = time.monotonic() - started
            statuses = await stack.statuses(ids)
            assert "sending" not in statuses.values(), "in-flight sends were finished before exit"
            done_at_stop = list(statuses.values()).count("sent")
            assert 0 < done_at_stop < 40, "it stopped taking new work"
            print(
                f"\nSIGTERM: exited 0 after {took:.2f}s, {done_at_stop} sent, the rest left queued"
            )
            await stack.start_worker()
            assert set((await stack.wait_all_terminal(ids)).values()) == {"sent"}
            assert set((await stack.sandbox_copies(ids)).values()) == {1}
        finally:
            worker.close()
