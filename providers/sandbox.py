"""The sandbox provider (DESIGN §12): records instead of sending; faults on demand.

Its behaviour (mode, fail rate, latency) lives in Redis, so one ``PUT`` changes every
worker process at once (each trusts its copy for ``HERALD_SANDBOX_CACHE_S``); what it
"sent" is kept in Redis for ``/v1/sandbox/messages``.

Storage, so that a read touches only what it asks for: every record goes, in one
pipeline, to the newest-first list of everything (trimmed to ``keep``), to the list of
its notification, of its recipient and of its caller (each trimmed, each expiring after
a week). A read picks the narrowest of those lists and pages through it. An OTP's text
(body and subject) is not in the record: it is kept under a key of its own until the
OTP expires, then gone; only admins are shown it.

With the sandbox off (``HERALD_SANDBOX_ENABLED=false``, the default outside ``herald
dev``) a sandbox provider still exists in the rules but refuses every message with the
permanent error ``sandbox_disabled``: nothing is recorded, the message ends ``failed``
and lands in the dead letters, where on-call sees the misrouting and replays once the
rules point at a real vendor. Reporting ``sent`` for a message that went nowhere, or
holding it back silently, would both hide the mistake.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from config.settings import Settings
from herald import names
from herald.batching import Batcher
from herald.domain import Category, Channel, Envelope, utcnow
from herald.errors import PermanentProviderError, TransientProviderError
from herald.logs import get_logger
from herald.text import as_text
from providers.base import BaseProvider, Receipt
from router.rules import RoutingRules

log = get_logger(__name__)
Mode = Literal["ok", "transient", "permanent"]
#: How long records stay findable by notification, recipient and caller.
INDEX_TTL_S = 7 * 24 * 3600
#: Newest records kept per recipient and per caller (a read asks for at most 10,000).
PER_RECIPIENT_KEEP = 1_000
PER_CALLER_KEEP = 10_000
#: How long an OTP's text is kept when the message carries no expiry (it always should).
OTP_TEXT_DEFAULT_S = 600
#: A read that filters beyond its index looks at no more records than this.
SCAN_BUDGET = 10_000
PAGE = 500
MASKED = "[redacted]"
#: A record not written within this long fails its send (as a slow vendor would).
RECORD_WAIT_S = 5.0


@dataclass(frozen=True, slots=True)
class SandboxBehaviour:
    mode: Mode = "ok"
    fail_rate: float = 1.0
    latency_ms: float = 0.0

    def should_fail(self, roll: float) -> bool:
        return self.mode != "ok" and roll < self.fail_rate


@dataclass(frozen=True, slots=True)
class Query:
    """What a reader asks for. ``caller`` set: only that caller's records (non-admins);
    ``reveal_otp``: show OTP texts still kept (admins)."""

    notification_id: str | None = None
    to: str | None = None
    provider: str | None = None
    caller: str | None = None
    reveal_otp: bool = False
    limit: int = 100

    def matches(self, item: dict[str, Any]) -> bool:
        return (
            (self.notification_id is None or item.get("notification_id") == self.notification_id)
            and (self.to is None or item.get("to") == self.to)
            and (self.provider is None or item.get("provider") == self.provider)
            and (self.caller is None or item.get("caller") == self.caller)
        )


def handle(value: str) -> str:
    """A recipient or caller as a Redis key part: fixed length, and no phone number or
    address in a key name."""
    return hashlib.sha256(value.encode()).hexdigest()[:32]


def otp_text_ttl_s(expires_at: datetime | None, now: datetime) -> int:
    """An OTP's text is kept until the OTP expires: after that no test can use it."""
    if expires_at is None:
        return OTP_TEXT_DEFAULT_S
    return max(1, int((expires_at - now).total_seconds()) + 1)


class SandboxStore:
    """Behaviour and sent-message records of every sandbox provider, kept in Redis."""

    def __init__(
        self,
        redis: Redis,
        *,
        keep: int = 100_000,
        enabled: bool = True,
        cache_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.keep = keep
        self.enabled = enabled
        self.cache_s = cache_s
        self._clock = clock
        self._cached: dict[str, bytes | str] = {}
        self._cached_until = float("-inf")
        self._records: Batcher[tuple[dict[str, Any], int | None], None] = Batcher(
            self._write_records,
            wait_s=RECORD_WAIT_S,
            shared_failure=lambda exc: isinstance(exc, RedisError),
            timeout_error=lambda s: RedisTimeoutError(f"sandbox record waited over {s} s"),
        )

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> SandboxStore:
        return cls(
            redis,
            keep=settings.sandbox_keep,
            enabled=settings.sandbox_on,
            cache_s=settings.sandbox_cache_s,
        )

    # -- behaviour -------------------------------------------------------------------------

    async def behaviour(self, provider: str) -> SandboxBehaviour:
        """This provider's behaviour, from a copy at most ``cache_s`` old (one Redis read
        per ``cache_s`` per process, not one per message)."""
        if self._clock() >= self._cached_until:
            raw = await self.redis.hgetall(names.sandbox_config_key())
            self._cached = {as_text(k): v for k, v in raw.items()}
            self._cached_until = self._clock() + self.cache_s
        found = self._cached.get(provider)
        return SandboxBehaviour(**orjson.loads(found)) if found else SandboxBehaviour()

    async def set_behaviour(self, provider: str, behaviour: SandboxBehaviour) -> None:
        await self.redis.hset(names.sandbox_config_key(), provider, orjson.dumps(asdict(behaviour)))
        self._cached_until = float("-inf")

    async def all_behaviours(self) -> dict[str, SandboxBehaviour]:
        raw = await self.redis.hgetall(names.sandbox_config_key())
        return {as_text(k): SandboxBehaviour(**orjson.loads(v)) for k, v in raw.items()}

    # -- records ---------------------------------------------------------------------------

    async def record(self, entry: dict[str, Any], *, otp_text_ttl: int | None = None) -> None:
        """Keep one record findable four ways. Records of concurrent sends (a delivery
        batch) share one pipeline. ``otp_text_ttl`` set: the body and subject go under a
        key of their own that expires then."""
        await self._records.submit((entry, otp_text_ttl))

    async def _write_records(
        self, records: Sequence[tuple[dict[str, Any], int | None]]
    ) -> list[None]:
        """One pipeline for the batch; a list shared by several records (everything, a
        recipient's, a caller's) gets one push of all of them, one trim, one expiry."""
        pushes: dict[str, list[bytes]] = {}
        caps: dict[str, int] = {names.sandbox_messages_key(): self.keep}
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry, otp_text_ttl in records:
                blob = self._record_blob(pipe, dict(entry), otp_text_ttl)
                per_message = names.sandbox_by_notification_key(entry["notification_id"])
                pipe.rpush(per_message, blob)
                pipe.expire(per_message, INDEX_TTL_S)
                pushes.setdefault(names.sandbox_messages_key(), []).append(blob)
                for key, cap in (
                    (names.sandbox_by_recipient_key(handle(entry["to"])), PER_RECIPIENT_KEEP),
                    (
                        names.sandbox_by_caller_key(handle(entry.get("caller") or "")),
                        PER_CALLER_KEEP,
                    ),
                ):
                    pushes.setdefault(key, []).append(blob)
                    caps[key] = min(cap, self.keep)
            for key, blobs in pushes.items():
                pipe.lpush(key, *blobs)  # the newest ends up first, as one push at a time
                pipe.ltrim(key, 0, caps[key] - 1)
                if key != names.sandbox_messages_key():
                    pipe.expire(key, INDEX_TTL_S)
            await pipe.execute()
        return [None] * len(records)

    def _record_blob(
        self, pipe: Pipeline, entry: dict[str, Any], otp_text_ttl: int | None
    ) -> bytes:
        """The stored record; an OTP's text goes under its own key, expiring with it."""
        if otp_text_ttl is not None:
            text_ref = uuid.uuid4().hex
            text = {"body": entry.get("body"), "subject": entry.get("subject")}
            entry.update(
                body=MASKED if text["body"] else None,
                subject=MASKED if text["subject"] else None,
                otp_text=text_ref,
            )
            pipe.set(names.sandbox_otp_text_key(text_ref), orjson.dumps(text), ex=otp_text_ttl)
        return orjson.dumps(entry)

    async def sent_for(self, notification_id: str) -> list[dict[str, Any]]:
        """Every record of one notification, oldest first (the provider's lookup)."""
        raw = await self.redis.lrange(names.sandbox_by_notification_key(notification_id), 0, -1)
        return [orjson.loads(item) for item in raw]

    async def find(self, query: Query) -> list[dict[str, Any]]:
        """Newest first, at most ``query.limit``, reading only the narrowest index."""
        if query.notification_id:
            candidates = list(reversed(await self.sent_for(query.notification_id)))
            found = [item for item in candidates if query.matches(item)][: query.limit]
        else:
            key, exact = self._index_for(query)
            found = await self._scan(key, query, exact=exact)
        if query.reveal_otp:
            await self._reveal_otp_texts(found)
        for item in found:
            item.pop("otp_text", None)
        return found

    @staticmethod
    def _index_for(query: Query) -> tuple[str, bool]:
        """The narrowest list for this query, and whether it holds exactly the matches."""
        if query.to is not None:
            key = names.sandbox_by_recipient_key(handle(query.to))
            return key, query.provider is None and query.caller is None
        if query.caller is not None:
            return names.sandbox_by_caller_key(handle(query.caller)), query.provider is None
        return names.sandbox_messages_key(), query.provider is None

    async def _scan(self, key: str, query: Query, *, exact: bool) -> list[dict[str, Any]]:
        """Page through one newest-first list until ``limit`` match; when the list holds
        exactly the matches, that is one read of ``limit`` records."""
        page = query.limit if exact else max(query.limit, PAGE)
        found: list[dict[str, Any]] = []
        start = 0
        while len(found) < query.limit and start < SCAN_BUDGET:
            raw = await self.redis.lrange(key, start, start + page - 1)
            found += [item for item in map(orjson.loads, raw) if query.matches(item)]
            if len(raw) < page:
                break
            start += page
        return found[: query.limit]

    async def _reveal_otp_texts(self, items: list[dict[str, Any]]) -> None:
        """Put back the OTP texts still kept (for admins); expired ones stay masked."""
        refs = [item["otp_text"] for item in items if item.get("otp_text")]
        if not refs:
            return
        texts = await self.redis.mget([names.sandbox_otp_text_key(ref) for ref in refs])
        kept = {ref: orjson.loads(raw) for ref, raw in zip(refs, texts, strict=True) if raw}
        for item in items:
            text = kept.get(item.get("otp_text") or "")
            if text is not None:
                item.update(body=text["body"], subject=text["subject"])

    async def clear(self) -> None:
        keys = [
            key
            for pattern in names.sandbox_message_patterns()
            async for key in self.redis.scan_iter(pattern, count=1000)
        ]
        await self.redis.delete(names.sandbox_messages_key(), *keys)


class SandboxProvider(BaseProvider):
    type_name = "sandbox"

    def __init__(
        self, name: str, channel: Channel, spec: dict[str, Any], *, store: SandboxStore
    ) -> None:
        super().__init__(name, channel, spec)
        self.store = store

    async def send(self, message: Envelope) -> Receipt:
        if not self.store.enabled:
            raise PermanentProviderError(
                f"{self.name}: sandbox providers are disabled (HERALD_SANDBOX_ENABLED); "
                "route this message to a real vendor and replay it",
                code="sandbox_disabled",
            )
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
        now = utcnow()
        otp = message.category is Category.OTP
        await self.store.record(
            {
                "notification_id": message.id,
                "generation": message.generation,
                "provider": self.name,
                "vendor_message_id": vendor_id,
                "channel": message.channel.value,
                "category": message.category.value,
                "caller": message.caller,
                "to": message.to,
                "subject": message.subject,
                "body": message.body,
                "data": message.data,
                "sent_at": now.isoformat(),
            },
            otp_text_ttl=otp_text_ttl_s(message.expires_at, now) if otp else None,
        )
        return Receipt(provider=self.name, vendor_message_id=vendor_id)

    async def lookup(self, message: Envelope) -> Receipt | None:
        if self.spec.get("lookup", True) is False:  # behave like a vendor with no lookup API
            return None
        if not self.store.enabled:
            return None
        for entry in await self.store.sent_for(message.id):
            if entry.get("generation", 0) == message.generation:
                return Receipt(
                    provider=entry["provider"], vendor_message_id=entry["vendor_message_id"]
                )
        return None


def routed_sandboxes(rules: RoutingRules) -> list[str]:
    """The sandbox providers some rule sends traffic to."""
    used = {entry.provider for rule in rules.rules for tier in rule.tiers for entry in tier}
    return sorted(
        name for name, spec in rules.providers.items() if spec.type == "sandbox" and name in used
    )


def warn_if_sandbox_routed(rules: RoutingRules, settings: Settings) -> None:
    """Outside ``herald dev`` a rule that routes to a sandbox is almost surely a mistake
    (messages recorded, not sent; or, with the sandbox off, failed): say so loudly."""
    if settings.dev_mode:
        return
    sandboxes = routed_sandboxes(rules)
    if sandboxes:
        log.warning(
            "sandbox_routed_outside_dev",
            providers=sandboxes,
            rules_version=rules.version,
            effect=(
                "recorded in Redis, never delivered"
                if settings.sandbox_on
                else "refused as sandbox_disabled and dead-lettered"
            ),
        )
