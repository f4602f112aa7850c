"""Assemble a worker from settings: clients, rules, providers, breakers, the consumer."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from herald.resources import Resources
from providers.registry import ProviderDeps, ProviderSet
from providers.sandbox import SandboxStore
from ratelimit import RedisRateLimiter
from router.health import BreakerBoard, breaker_config
from router.source import RulesSource
from router.store import RulesStore
from router.validation import RulesPolicy
from workers.claims import Claims, lease_seconds
from workers.consumer import Consumer
from workers.delivery import Delivery, DeliveryContext
from workers.events import EventPublisher
from workers.otp_render import OtpRenderer
from workers.store import DeliveryStore
from workers.throttle import ProviderThrottle


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(slots=True)
class Worker:
    consumer: Consumer
    providers: ProviderSet
    rules: RulesSource

    async def start(self) -> None:
        self.rules.start()
        await self.consumer.start()

    async def stop(self, grace_s: float) -> None:
        """Stop consuming, then give deliveries still running (those whose consumer
        callback a broker cut cancelled included) what is left of ``grace_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        await self.consumer.stop(grace_s)
        await self.consumer.delivery.drain(deadline - loop.time())
        await self.rules.stop()
        await self.providers.close()


async def build_worker(resources: Resources, queues: Iterable[str]) -> Worker:
    settings = resources.settings
    assert resources.amqp is not None and resources.publisher is not None
    policy = RulesPolicy.from_settings(settings)
    providers = ProviderSet(
        ProviderDeps(
            sandbox_store=SandboxStore.from_settings(resources.redis, settings),
            redis=resources.redis,
            policy=policy.vendor,
        )
    )
    rules = RulesSource(
        RulesStore(resources.sessions, settings.routing_file, policy),
        resources.redis,
        poll_s=settings.rules_poll_s,
    )
    rules.on_change(providers.sync)
    await rules.load()
    ctx = DeliveryContext(
        settings=settings,
        store=DeliveryStore(resources.sessions, bulk_slots=2 if settings.is_sqlite else 16),
        claims=Claims(resources.redis, owner=worker_identity(), lease_s=lease_seconds(settings)),
        publisher=resources.publisher,
        events=EventPublisher(resources.amqp),
        providers=providers,
        rules=rules.current,
        throttle=ProviderThrottle(RedisRateLimiter(resources.redis)),
        otp=OtpRenderer(resources.redis, settings.otp_secret.get_secret_value().encode()),
        breakers=BreakerBoard(
            resources.redis, breaker_config(settings), cache_s=settings.breaker_cache_s
        ),
    )
    consumer = Consumer(
        resources.amqp,
        Delivery(ctx),
        queues=queues,
        prefetch=settings.worker_prefetch,
        high_prefetch=settings.worker_high_prefetch,
        batch_max=settings.worker_batch_max,
    )
    return Worker(consumer, providers, rules)
