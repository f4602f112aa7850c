"""Assemble a worker from settings: clients, providers, the delivery loop, the consumer."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable

from herald.resources import Resources
from providers.base import Provider
from providers.registry import ProviderDeps, build_provider
from providers.sandbox import SandboxStore
from router.source import FileRulesSource
from workers.claims import Claims
from workers.consumer import Consumer
from workers.delivery import Delivery, DeliveryContext
from workers.events import EventPublisher
from workers.store import DeliveryStore


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def build_providers(rules_source: FileRulesSource, deps: ProviderDeps) -> dict[str, Provider]:
    return {
        name: build_provider(name, spec.raw, deps)
        for name, spec in rules_source.current().providers.items()
    }


async def build_consumer(
    resources: Resources, queues: Iterable[str]
) -> tuple[Consumer, dict[str, Provider]]:
    settings = resources.settings
    assert resources.amqp is not None and resources.publisher is not None
    rules_source = FileRulesSource(settings.routing_file)
    providers = build_providers(
        rules_source,
        ProviderDeps(sandbox_store=SandboxStore(resources.redis, keep=settings.sandbox_keep)),
    )
    ctx = DeliveryContext(
        settings=settings,
        store=DeliveryStore(resources.sessions),
        claims=Claims(resources.redis, owner=worker_identity(), lease_s=settings.claim_lease_s),
        publisher=resources.publisher,
        events=EventPublisher(resources.amqp),
        providers=providers,
        rules=rules_source.current,
    )
    consumer = Consumer(
        resources.amqp,
        Delivery(ctx),
        queues=queues,
        prefetch=settings.worker_prefetch,
        high_prefetch=settings.worker_high_prefetch,
    )
    return consumer, providers
