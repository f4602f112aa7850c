"""Fault tests: cut RabbitMQ, kill and stop workers, a vendor that only times out; then
count what arrived."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import select

from config.settings import DEFAULT_ROUTING_FILE
from herald.domain import utcnow
from herald.storage.models import Attempt, Notification
from providers.sandbox import SandboxStore
from tests.support.stack import Stack, WorkerProcess, free_port, running_stack
from tests.support.tcpproxy import TcpProxy
from tests.support.waiting import wait_until

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
                    try:  # consuming starts before the probe server listens
                        scraped = (await plain.get(metrics_url)).text
                    except httpx.TransportError:
                        return False
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


# -- a slow vendor: every call times out ---------------------------------------------------


async def attempts_by_message(stack: Stack, ids: list[str]) -> dict[str, list[tuple[str, str]]]:
    async with stack.sessions() as session:
        rows = await session.execute(
            select(Attempt.notification_id, Attempt.outcome, Attempt.error_code)
            .where(Attempt.notification_id.in_(ids))
            .order_by(Attempt.id)
        )
        out: dict[str, list[tuple[str, str]]] = {nid: [] for nid in ids}
        for nid, outcome, code in rows:
            out[nid].append((outcome, code or ""))
        return out


async def charged_attempts(stack: Stack, ids: list[str]) -> dict[str, tuple[int, str]]:
    """Each message's charged attempts and status, read together."""
    async with stack.sessions() as session:
        rows = await session.execute(
            select(Notification.id, Notification.attempt_count, Notification.status).where(
                Notification.id.in_(ids)
            )
        )
        return {nid: (count, status) for nid, count, status in rows}


async def breaker_state(stack: Stack, name: str) -> str:
    items = (await stack.client.get("/v1/providers")).json()["items"]
    return str(next(p["breaker"] for p in items if p["name"] == name))


@pytest.mark.serial  # counts probe rounds in a time window: alone, after the parallel part
async def test_a_vendor_that_only_times_out_costs_waiting_messages_no_attempts(
    settings_for,
) -> None:
    """Issue 11 finding 8: every call times out (the vendor is slow, not down), for many
    probe rounds. Before, the half-open probes charged the messages they carried, which
    made up to 8 attempts each, and each a possible real send. Now, once the breaker is
    open, no message's charged attempts grow: a failed probe is the breaker's test, not
    the message's attempt (the call stays in its history). When the vendor is quick
    again, each is sent once."""
    values = settings_for(
        provider_timeout_s=0.5,
        breaker_min_calls=5,
        breaker_window_s=5,
        breaker_cooldown_s=1,
        breaker_probes=2,
        worker_prefetch=50,
    )
    async with running_stack(values) as stack:
        await stack.set_sandbox("sandbox-sms", "ok", latency_ms=5000)  # far past the timeout
        ids = await send_many(stack, 20)

        async def breaker_open() -> bool:
            return await breaker_state(stack, "sandbox-sms") == "open"

        await wait_until(breaker_open, timeout=30)
        at_open = await charged_attempts(stack, ids)
        calls_at_open = sum(len(a) for a in (await attempts_by_message(stack, ids)).values())

        async def several_probe_rounds() -> bool:
            calls = sum(len(a) for a in (await attempts_by_message(stack, ids)).values())
            return calls >= calls_at_open + 3 * 2

        await wait_until(several_probe_rounds, timeout=60)
        later = await charged_attempts(stack, ids)
        history = await attempts_by_message(stack, ids)
        await stack.set_sandbox("sandbox-sms", "ok", latency_ms=0)
        statuses = await stack.wait_all_terminal(ids, timeout=60)
        copies = await stack.sandbox_copies(ids)

    # A probe in flight right now shows its attempt until it fails and is given back.
    settled = [nid for nid, (_, status) in later.items() if status != "sending"]
    grew = {
        nid: (at_open[nid][0], later[nid][0]) for nid in settled if later[nid][0] > at_open[nid][0]
    }
    calls = {nid: len(a) for nid, a in history.items()}
    uncharged = sum(calls[nid] - later[nid][0] for nid in settled)
    print(
        f"\nslow vendor: {sum(calls.values())} calls for {len(ids)} messages, "
        f"{uncharged} of them failed probes charged to no message"
    )
    assert grew == {}, "no attempt charged while the breaker was open"
    assert uncharged >= 3, "the probes ran, and cost their messages nothing"
    assert {code for a in history.values() for outcome, code in a if outcome != "sending"} == {
        "timeout"
    }
    assert "dead_lettered" not in {status for _, status in later.values()}
    assert set(statuses.values()) == {"sent"}
    assert set(copies.values()) == {1}


async def test_a_retry_after_a_timeout_asks_the_vendor_first_and_does_not_resend(
    settings_for,
) -> None:
    """A call that timed out may have reached the vendor. The vendor here did accept it
    (its record says so) but answered too late; the retry asks it (lookup) before
    sending, records the send it finds, and sends nothing again."""
    slow_retry = {"base_s": 3, "factor": 2, "cap_s": 3, "max_attempts": 4, "jitter": False}
    values = settings_for(provider_timeout_s=0.5, backoff={"transactional": slow_retry})
    async with running_stack(values) as stack:
        await stack.set_sandbox("sandbox-sms", "ok", latency_ms=2000)
        [nid] = await send_many(stack, 1)

        async def timed_out() -> bool:
            return (await stack.notification(nid))["status"] == "retry_scheduled"

        await wait_until(timed_out, timeout=20)
        # What the vendor did with the request that got no answer in time: it sent it.
        vendor = SandboxStore(stack.redis, keep=1000)
        await vendor.record(
            {
                "notification_id": nid,
                "generation": 0,
                "provider": "sandbox-sms",
                "vendor_message_id": "sbx-late-answer",
                "channel": "sms",
                "category": "transactional",
                "caller": None,
                "to": SMS["to"],
                "subject": None,
                "body": SMS["body"],
                "data": {},
                "sent_at": utcnow().isoformat(),
            }
        )
        await stack.set_sandbox("sandbox-sms", "ok", latency_ms=0)
        done = await stack.wait_status(nid, "sent", timeout=20)
        copies = await stack.sandbox_copies([nid])

    assert [(a["outcome"], a["error_code"]) for a in done["attempts"]] == [
        ("transient_error", "timeout"),
        ("reconciled", None),
    ]
    assert copies == {nid: 1}, "the vendor got it once: nothing was resent"
