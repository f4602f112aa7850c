"""Two worker processes, two SMS vendors: the cheap one breaks, its breaker opens for
every worker, traffic fails over, and it gets the traffic back through half-open probes."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.stack import Stack, WorkerProcess, running_stack
from tests.test_routing_api import two_sms_providers

pytestmark = [
    pytest.mark.integration,
    pytest.mark.fault,
    # Rates and breaker timings: alone on the box, after the parallel part (Makefile).
    pytest.mark.serial,
    # PostgreSQL only: the breaker and the max_per_s slots these tests prove are shared
    # through Redis, whatever the database; the deployment with two worker processes runs
    # on PostgreSQL. Two worker processes on SQLite: tests/test_processes.py.
    pytest.mark.parametrize("database_url", ["postgresql"], indirect=True),
]

SMS = {"channel": "sms", "to": "+447400123456", "category": "transactional", "body": "hi"}


async def breaker_of(stack: Stack, name: str) -> str:
    items = (await stack.client.get("/v1/providers")).json()["items"]
    return next(p["breaker"] for p in items if p["name"] == name)


async def wait_for_breaker(stack: Stack, name: str, state: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (seen := await breaker_of(stack, name)) != state:
        assert time.monotonic() < deadline, f"{name} breaker still {seen}"
        await asyncio.sleep(0.1)


async def send_for(stack: Stack, seconds: float, per_second: int) -> list[str]:
    ids: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        batch = await asyncio.gather(*(stack.send(**SMS) for _ in range(per_second // 10)))
        ids += [r.json()["id"] for r in batch]
        await asyncio.sleep(0.1)
    return ids


async def test_breaker_opens_for_all_workers_fails_over_and_recovers(
    settings_for: Any, tmp_path: Path
) -> None:
    routing = tmp_path / "routing.yaml"
    routing.write_text(yaml.safe_dump(two_sms_providers()))
    values = settings_for(
        routing_file=str(routing),
        breaker_min_calls=5,
        breaker_window_s=5,
        breaker_cooldown_s=1,
        breaker_probes=2,
    )
    async with running_stack(values, workers=0) as stack:
        workers = [WorkerProcess(values, tmp_path / f"worker-{i}.log").start() for i in range(2)]
        try:
            warm_up = await send_for(stack, 0.5, per_second=20)
            await stack.wait_all_terminal(warm_up)  # both workers are up and consuming
            await stack.set_sandbox("sandbox-sms-cheap", "transient")
            broken_at = time.monotonic()
            sending = asyncio.create_task(send_for(stack, 3, per_second=40))
            await wait_for_breaker(stack, "sandbox-sms-cheap", "open")
            print(f"\nbreaker open {time.monotonic() - broken_at:.1f}s after the vendor broke")
            broken_phase = await sending
            assert set((await stack.wait_all_terminal(broken_phase)).values()) == {"sent"}
            copies = await stack.sandbox_copies(broken_phase)
            assert set(copies.values()) == {1}, "nothing lost, nothing sent twice"
            cheap_tries = 0
            for nid in broken_phase:
                [sent] = await stack.sandbox(nid)
                assert sent["provider"] == "sandbox-sms"
                attempts = (await stack.notification(nid))["attempts"]
                cheap_tries += sum(a["provider"] == "sandbox-sms-cheap" for a in attempts)
            # Once open, the broken vendor stops being tried: far fewer tries than messages.
            assert 0 < cheap_tries < len(broken_phase) / 2

            await stack.set_sandbox("sandbox-sms-cheap", "ok")
            await asyncio.sleep(1.2)  # the cool-down
            recovery = await send_for(stack, 3, per_second=20)
            await stack.wait_all_terminal(recovery)
            await wait_for_breaker(stack, "sandbox-sms-cheap", "closed")
            last = recovery[-10:]
            providers = {(await stack.sandbox(nid))[0]["provider"] for nid in last}
            assert providers == {"sandbox-sms-cheap"}, "the cheaper vendor has its traffic back"
        finally:
            for worker in workers:
                worker.close()


async def test_max_per_s_holds_across_two_worker_processes(
    settings_for: Any, tmp_path: Path
) -> None:
    doc = two_sms_providers()
    doc["providers"]["sandbox-sms"]["max_per_s"] = 10
    doc["rules"][0]["tiers"] = [["sandbox-sms"]]
    del doc["providers"]["sandbox-sms-cheap"]
    routing = tmp_path / "routing.yaml"
    routing.write_text(yaml.safe_dump(doc))
    values = settings_for(routing_file=str(routing))
    async with running_stack(values, workers=0) as stack:
        workers = [WorkerProcess(values, tmp_path / f"worker-{i}.log").start() for i in range(2)]
        try:
            ids = [
                r.json()["id"]
                for r in await asyncio.gather(*(stack.send(**SMS) for _ in range(60)))
            ]
            await stack.wait_all_terminal(ids, timeout=60)
            sent_at = []
            for nid in ids:
                [record] = await stack.sandbox(nid)
                sent_at.append(datetime.fromisoformat(record["sent_at"]).timestamp())
            sent_at.sort()
        finally:
            for worker in workers:
                worker.close()
    per_second = Counter(int(t) for t in sent_at)
    # The most sends recorded in any 2 s window: a slot is booked before the attempt row
    # is written, so a database stall lets a few booked sends land together (a known
    # weakness until the booking moves next to the vendor call); 2 s smooths that jitter
    # while any real loss of the cap (60 at once) still fails.
    busiest_2s = max(sum(1 for u in sent_at if t <= u < t + 2) for t in sent_at)
    print(
        f"\nmax_per_s=10 over two workers: busiest second {max(per_second.values())}, "
        f"busiest 2 s {busiest_2s}, 60 sends over {sent_at[-1] - sent_at[0]:.1f}s"
    )
    # 20 in 2 s, + the throttle's tolerance (6 slots booked up to 0.5 s ahead) recorded late.
    assert busiest_2s <= 26
    assert sent_at[-1] - sent_at[0] >= 5.0  # 60 sends at 10/s cannot take much less than 6 s
