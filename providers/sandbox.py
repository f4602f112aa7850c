"""The sandbox provider (DESIGN §12): records instead of sending; faults on demand.

Its behaviour (mode, fail rate, latency) lives in Redis, so one ``PUT`` changes every
worker process at once; what it "sent" is kept in Redis for ``/v1/sandbox/messages``.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Literal

import orjson
from redis.asyncio import Redis

from herald import names
from herald.domain import Channel, Envelope, utcnow
from herald.errors import PermanentProviderError, TransientProviderError
from providers.base import BaseProvider, Receipt

Mode = Literal["ok", "transient", "permanent"]


@dataclass(frozen=True, slots=True)
class SandboxBehaviour:
    mode: Mode = "ok"
    fail_rate: float = 1.0
    latency_ms: float = 0.0

    def should_fail(self, roll: float) -> bool:
        return self.mode != "ok" and roll < self.fail_rate


class SandboxStore:
    """Behaviour and sent-message records of every sandbox provider, kept in Redis."""

    def __init__(self, redis: Redis, *, keep: int = 100_000) -> None:
        self.redis = redis
        self.keep = keep

    async def behaviour(self, provider: str) -> SandboxBehaviour:
        raw = await self.redis.hget(names.sandbox_config_key(), provider)
        return SandboxBehaviour(**orjson.loads(raw)) if raw else SandboxBehaviour()

    async def set_behaviour(self, provider: str, behaviour: SandboxBehaviour) -> None:
        await self.redis.hset(names.sandbox_config_key(), provider, orjson.dumps(asdict(behaviour)))

    async def all_behaviours(self) -> dict[str, SandboxBehaviour]:
        raw = await self.redis.hgetall(names.sandbox_config_key())
        return {
            (k.decode() if isinstance(k, bytes) else k): SandboxBehaviour(**orjson.loads(v))
            for k, v in raw.items()
        }

    async def record(self, entry: dict[str, Any]) -> None:
        blob = orjson.dumps(entry)
        per_message = names.sandbox_by_notification_key(entry["notification_id"])
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lpush(names.sandbox_messages_key(), blob)
            pipe.ltrim(names.sandbox_messages_key(), 0, self.keep - 1)
            pipe.rpush(per_message, blob)
            pipe.expire(per_message, 7 * 24 * 3600)
            await pipe.execute()

    async def sent_for(self, notification_id: str) -> list[dict[str, Any]]:
        raw = await self.redis.lrange(names.sandbox_by_notification_key(notification_id), 0, -1)
        return [orjson.loads(item) for item in raw]

    async def list(
        self,
        *,
        notification_id: str | None = None,
        to: str | None = None,
        provider: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        if notification_id:
            items = list(reversed(await self.sent_for(notification_id)))
        else:
            items = [
                orjson.loads(i)
                for i in await self.redis.lrange(names.sandbox_messages_key(), 0, -1)
            ]
        out = [
            item
            for item in items
            if (to is None or item["to"] == to)
            and (provider is None or item["provider"] == provider)
        ]
        return out[:limit]

    async def clear(self) -> None:
        keys = [k async for k in self.redis.scan_iter(names.sandbox_by_notification_key("*"))]
        await self.redis.delete(names.sandbox_messages_key(), *keys)


class SandboxProvider(BaseProvider):
    type_name = "sandbox"

    def __init__(
        self, name: str, channel: Channel, spec: dict[str, Any], *, store: SandboxStore
    ) -> None:
        super().__init__(name, channel, spec)
        self.store = store

    async def send(self, message: Envelope) -> Receipt:
        behaviour = await self.store.behaviour(self.name)
        if behaviour.latency_ms:
            await asyncio.sleep(behaviour.latency_ms / 1000)
        if behaviour.should_fail(random.random()):
            if behaviour.mode == "permanent":
                raise PermanentProviderError(
                    f"{self.name}: recipient rejected (sandbox)", code="sandbox_permanent"
                )
            raise TransientProviderError(
                f"{self.name}: vendor unavailable (sandbox)", code="sandbox_transient"
            )
        vendor_id = f"sbx-{uuid.uuid4().hex[:16]}"
        await self.store.record(
            {
                "notification_id": message.id,
                "generation": message.generation,
                "provider": self.name,
                "vendor_message_id": vendor_id,
                "channel": message.channel.value,
                "to": message.to,
                "subject": message.subject,
                "body": message.body,
                "data": message.data,
                "sent_at": utcnow().isoformat(),
            }
        )
        return Receipt(provider=self.name, vendor_message_id=vendor_id)

    async def lookup(self, message: Envelope) -> Receipt | None:
        if self.spec.get("lookup", True) is False:  # behave like a vendor with no lookup API
            return None
        for entry in await self.store.sent_for(message.id):
            if entry.get("generation", 0) == message.generation:
                return Receipt(
                    provider=entry["provider"], vendor_message_id=entry["vendor_message_id"]
                )
        return None
