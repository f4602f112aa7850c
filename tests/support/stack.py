"""A real Herald stack for tests: API (uvicorn), workers and ingester in this event loop,
or ``herald worker`` subprocesses; talking to the real RabbitMQ, Redis and database."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import yaml
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import func, select

from config.settings import Settings
from herald import names
from herald.resources import Resources, topology_for
from herald.service import WorkerParts, _api_server
from herald.storage.db import make_engine, make_session_factory
from herald.storage.models import Attempt, DeadLetter, Notification, OutboxEntry
from tests.support.waiting import wait_until

ADMIN_KEY = "test-admin-key"
TEST_AMQP_URL = os.environ.get(
    "HERALD_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/herald_test"
)
TEST_REDIS_URL = os.environ.get("HERALD_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
FAST_BACKOFF = {"base_s": 0.1, "factor": 2, "cap_s": 0.8, "max_attempts": 4}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stack_settings(database_url: str, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "database_url": database_url,
        "amqp_url": TEST_AMQP_URL,
        "redis_url": TEST_REDIS_URL,
        "api_port": free_port(),
        "bootstrap_api_key": ADMIN_KEY,
        "retry_buckets_ms": [100, 200, 400, 800],
        "backoff": {c: FAST_BACKOFF for c in ("otp", "transactional", "marketing")},
        "claim_lease_s": 3,
        "outbox_relay_after_s": 1,
        "outbox_relay_interval_s": 0.2,
        "provider_timeout_s": 3,
        "shutdown_grace_s": 10,
        "log_level": "WARNING",
        "metrics_port": None,
        "sandbox_enabled": True,
        # Tests flip sandbox behaviours and send at once: no cached copy.
        "sandbox_cache_s": 0,
        "otp_secret": "test-otp-secret-0123456789abcdef0123456789",
        "console_secret": "test-console-secret-0123456789abcdef012345",
        # Tests send hundreds of messages to one number: limits are tested on their own.
        "limit_api_key": {"rate": 100_000, "period_s": 1},
        "limit_recipient": {"rate": 100_000, "period_s": 1},
        "limit_sms_country": {"rate": 100_000, "period_s": 1},
        "limit_sms_prefix": {"rate": 100_000, "period_s": 1},
    }
    if "allowed_endpoints" not in overrides and overrides.get("routing_file"):
        overrides = {**overrides, "allowed_endpoints": endpoints_in(overrides["routing_file"])}
    values.update(overrides)
    return values


def endpoints_in(routing_file: str | Path) -> list[str]:
    """The endpoints a test's routing file uses (its local fakes): what an operator
    lists in HERALD_ALLOWED_ENDPOINTS for the rules they deploy. A test of the allow-list
    itself passes ``allowed_endpoints`` explicitly."""
    document = yaml.safe_load(Path(routing_file).read_text()) or {}
    providers = (document.get("providers") or {}).values()
    return sorted({str(p["endpoint"]) for p in providers if p.get("endpoint")})


def as_env(values: dict[str, Any]) -> dict[str, str]:
    """A child's environment: our settings, the vendor credentials, no other HERALD_*."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("HERALD_") or k.startswith("HERALD_VENDOR_")
    }
    for key, value in values.items():
        env[f"HERALD_{key.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


async def reset_broker(settings: Settings) -> None:
    """Declare the topology and empty every queue of the test vhost."""
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        await topology_for(settings).declare(channel)
        queue_names = [
            *names.all_work_queues(),
            names.DLQ,
            *(names.retry_queue(ms) for ms in settings.retry_buckets_ms),
        ]
        for name in queue_names:
            queue = await channel.get_queue(name, ensure=False)
            await queue.purge()


async def queue_depths(settings: Settings) -> dict[str, int]:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        depths = {}
        for name in [*names.all_work_queues(), names.DLQ]:
            queue = await channel.declare_queue(name, passive=True)
            depths[name] = queue.declaration_result.message_count or 0
        return depths


async def consumer_count(amqp_url: str, queue_name: str) -> int:
    """How many consumers the broker counts on ``queue_name`` (a passive declare: one AMQP
    round trip, where ``rabbitmqctl list_consumers`` starts an Erlang VM for ~1-3 s)."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, passive=True)
        return queue.declaration_result.consumer_count or 0


class HeraldProcess:
    """A ``herald`` command in a child process, so a test can SIGKILL or SIGTERM it."""

    command = "worker"

    def __init__(self, values: dict[str, Any], log_path: Path) -> None:
        self.values = values
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> HeraldProcess:
        herald = Path(sys.executable).with_name("herald")
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(herald), self.command],
            env=as_env(self.values),
            stdout=self._log,
            stderr=self._log,
        )
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.kill()
        self._log.close()


class WorkerProcess(HeraldProcess):
    command = "worker"


class ApiProcess(HeraldProcess):
    """``herald api`` on ``values["api_port"]``; ``wait_ready`` polls /readyz."""

    command = "api"

    async def wait_ready(self, timeout: float = 30) -> str:
        url = f"http://127.0.0.1:{self.values['api_port']}"
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                try:
                    if (await client.get(f"{url}/readyz")).status_code == 200:
                        return url
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        raise TimeoutError(f"herald api on {url} did not become ready")


class Stack:
    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.settings = Settings(**values)
        self.url = f"http://127.0.0.1:{self.settings.api_port}"
        self.client = httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            timeout=15,
            # Drop idle connections before uvicorn's 5 s keep-alive closes them under us.
            limits=httpx.Limits(keepalive_expiry=2),
        )
        self.redis = Redis.from_url(self.settings.redis_url)
        self.engine = make_engine(self.settings.database_url)
        self.sessions = make_session_factory(self.engine)
        self._server: Any = None
        self._serving: asyncio.Task[None] | None = None
        self._workers: list[tuple[Resources, WorkerParts]] = []

    async def start_api(self, *, run_relay: bool = True) -> None:
        self._server = _api_server(self.settings, run_relay=run_relay)
        self._serving = asyncio.create_task(self._server.serve())
        deadline = time.monotonic() + 15
        while not self._server.started:
            if self._serving.done():
                self._serving.result()
            if time.monotonic() > deadline:
                raise TimeoutError("API did not start")
            await asyncio.sleep(0.05)

    async def stop_api(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            assert self._serving is not None
            await self._serving
            self._server = None

    async def start_worker(self, **overrides: Any) -> WorkerParts:
        settings = Settings(**{**self.values, **overrides})
        resources = await Resources.open(settings, name="herald-test-worker")
        parts = await WorkerParts.start(resources, names.all_work_queues(), ingest=True)
        self._workers.append((resources, parts))
        return parts

    async def workers_on_rules(self, version: int, timeout: float = 20) -> None:
        """Wait until every in-process worker routes with rules ``version`` (they load a
        saved version within about a second: a send right after a save may miss it)."""

        def loaded() -> bool:
            return all(p.worker.rules.current().version == version for _, p in self._workers)

        await wait_until(loaded, timeout, f"workers on rules version {version}")

    async def stop_workers(self) -> None:
        for resources, parts in self._workers:
            await parts.stop(10)
            await resources.close()
        self._workers.clear()

    async def close(self) -> None:
        await self.stop_workers()
        await self.stop_api()
        await self.client.aclose()
        await self.redis.aclose()
        await self.engine.dispose()

    # -- helpers a test reads like prose ------------------------------------------------

    async def send(self, **payload: Any) -> httpx.Response:
        headers = payload.pop("headers", None)
        return await self.client.post("/v1/notifications", json=payload, headers=headers)

    async def notification(self, notification_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/v1/notifications/{notification_id}")
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    async def wait_status(
        self, notification_id: str, *statuses: str, timeout: float = 20
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            body = await self.notification(notification_id)
            if body["status"] in statuses:
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"{notification_id} stuck in {body['status']}: {body}")
            await asyncio.sleep(0.05)

    async def wait_all_terminal(self, ids: list[str], timeout: float = 60) -> dict[str, str]:
        terminal = ("sent", "failed", "dead_lettered", "expired")
        deadline = time.monotonic() + timeout
        while True:
            statuses = await self.statuses(ids)
            if all(s in terminal for s in statuses.values()):
                return statuses
            if time.monotonic() > deadline:
                stuck = {i: s for i, s in statuses.items() if s not in terminal}
                raise AssertionError(f"{len(stuck)} not terminal: {list(stuck.items())[:5]}")
            await asyncio.sleep(0.2)

    async def statuses(self, ids: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        async with self.sessions() as session:
            for start in range(0, len(ids), 500):
                rows = await session.execute(
                    select(Notification.id, Notification.status).where(
                        Notification.id.in_(ids[start : start + 500])
                    )
                )
                out.update({r.id: r.status for r in rows})
        return out

    async def attempt_outcomes(self, ids: list[str]) -> dict[str, list[str]]:
        """Each notification's attempt outcomes, oldest first."""
        out: dict[str, list[str]] = {nid: [] for nid in ids}
        async with self.sessions() as session:
            rows = await session.execute(
                select(Attempt.notification_id, Attempt.outcome)
                .where(Attempt.notification_id.in_(ids))
                .order_by(Attempt.id)
            )
            for nid, outcome in rows:
                out[nid].append(outcome)
        return out

    async def sandbox_copies(self, ids: list[str]) -> dict[str, int]:
        """How many times the sandbox received each notification (1 is right)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for nid in ids:
                pipe.llen(names.sandbox_by_notification_key(nid))
            counts = await pipe.execute()
        return dict(zip(ids, counts, strict=True))

    async def sandbox(self, notification_id: str) -> list[dict[str, Any]]:
        response = await self.client.get(
            "/v1/sandbox/messages", params={"notification_id": notification_id}
        )
        response.raise_for_status()
        return response.json()["items"]  # type: ignore[no-any-return]

    async def set_sandbox(self, provider: str, mode: str, **extra: Any) -> None:
        response = await self.client.put(
            f"/v1/sandbox/providers/{provider}", json={"mode": mode, **extra}
        )
        response.raise_for_status()

    async def count(self, model: Any) -> int:
        async with self.sessions() as session:
            return int(
                (await session.execute(select(func.count()).select_from(model))).scalar_one()
            )

    async def nothing_stored_or_queued(self) -> bool:
        depths = await queue_depths(self.settings)
        return (
            await self.count(Notification) == 0
            and await self.count(OutboxEntry) == 0
            and not any(depths.values())
        )

    async def dead_letters(self) -> list[DeadLetter]:
        async with self.sessions() as session:
            return list((await session.execute(select(DeadLetter))).scalars())


@contextlib.asynccontextmanager
async def running_stack(values: dict[str, Any], *, workers: int = 1, api: bool = True):  # type: ignore[no-untyped-def]
    stack = Stack(values)
    await reset_broker(stack.settings)
    with contextlib.suppress(RedisConnectionError):  # some tests run with Redis cut off
        await stack.redis.flushdb()
    try:
        if api:
            await stack.start_api()
        for _ in range(workers):
            await stack.start_worker()
        yield stack
    finally:
        await stack.close()
