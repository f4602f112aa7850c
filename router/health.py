"""Provider health shared by every worker: breaker states, call windows, latencies (Redis).

Reads are cached for ``cache_s`` (about a second), so a closed breaker costs no Redis
call per send; transitions are atomic (WATCH/MULTI) so two workers never both let the
last half-open probe through.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from redis.asyncio import Redis
from redis.exceptions import WatchError

from config.settings import Settings
from herald import names
from router.breaker import (
    Breaker,
    BreakerConfig,
    BreakerState,
    Override,
    after_probe,
    after_window,
    looks_available,
    request_send,
    should_trip,
)


def breaker_config(settings: Settings) -> BreakerConfig:
    return BreakerConfig(
        window_s=settings.breaker_window_s,
        min_calls=settings.breaker_min_calls,
        failure_rate=settings.breaker_failure_rate,
        cooldown_s=settings.breaker_cooldown_s,
        probes=settings.breaker_probes,
        probe_timeout_s=settings.provider_timeout_s + 1,
    )


T = TypeVar("T")
LATENCY_SAMPLES = 200


@dataclass(frozen=True, slots=True)
class ProviderStats:
    calls: int
    failures: int
    p95_ms: float | None

    @property
    def success_rate(self) -> float | None:
        return None if self.calls == 0 else round(1 - self.failures / self.calls, 4)


class BreakerBoard:
    def __init__(
        self,
        redis: Redis,
        config: BreakerConfig,
        *,
        cache_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.config = config
        self.cache_s = cache_s
        self.clock = clock
        self._cache: dict[str, Breaker] = {}
        self._cached_at: dict[str, float] = {}

    async def states(self, providers: Iterable[str]) -> dict[str, Breaker]:
        wanted = list(providers)
        now = self.clock()
        stale = [p for p in wanted if now - self._cached_at.get(p, -math.inf) >= self.cache_s]
        if stale:
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in stale:
                    pipe.hgetall(names.breaker_key(name))
                raw = await pipe.execute()
            for name, value in zip(stale, raw, strict=True):
                self._cache[name] = Breaker.from_redis(value)
                self._cached_at[name] = now
        return {name: self._cache[name] for name in wanted}

    async def availability(self, providers: Iterable[str]) -> dict[str, bool]:
        now = self.clock()
        return {
            n: looks_available(b, now, self.config)
            for n, b in (await self.states(providers)).items()
        }

    async def acquire(self, provider: str) -> bool:
        """The gate before a send: free while closed, atomic while open or half-open."""
        cached = (await self.states([provider]))[provider]
        if cached.override is not None or cached.state is BreakerState.CLOSED:
            return cached.override is not Override.OPEN
        now = self.clock()
        return await self._transition(provider, lambda b: request_send(b, now, self.config))

    def probing(self, provider: str) -> bool:
        """Was the send ``acquire`` just let through a half-open probe? (This worker's
        view, read with no I/O right after ``acquire``.)"""
        cached = self._cache.get(provider)
        return (
            cached is not None
            and cached.override is None
            and cached.state is BreakerState.HALF_OPEN
        )

    async def record(self, provider: str, *, ok: bool, latency_ms: float | None = None) -> None:
        """Count one call; trip or close the breaker when the numbers say so."""
        now = self.clock()
        second = int(now)
        key = names.breaker_window_key(provider, second)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(key, "calls", 1)
            if not ok:
                pipe.hincrby(key, "failures", 1)
            pipe.expire(key, self.config.window_s + 5)
            if latency_ms is not None:
                pipe.lpush(names.latency_key(provider), round(latency_ms, 3))
                pipe.ltrim(names.latency_key(provider), 0, LATENCY_SAMPLES - 1)
            await pipe.execute()

        cached = self._cache.get(provider, Breaker())
        if cached.state is BreakerState.HALF_OPEN:
            await self._transition(provider, lambda b: (None, after_probe(b, ok, now, self.config)))
        elif not ok and cached.state is BreakerState.CLOSED:
            calls, failures = await self._window(provider, second)
            if should_trip(calls, failures, self.config):
                await self._transition(
                    provider, lambda b: (None, after_window(b, calls, failures, now, self.config))
                )

    async def record_successes(self, latencies: dict[str, list[float]]) -> None:
        """Count a batch of successful calls per provider in one pipeline. Successes of a
        closed breaker change no state, so no transition is checked (the one-by-one
        ``record`` handles half-open probes and failures)."""
        second = int(self.clock())
        async with self.redis.pipeline(transaction=False) as pipe:
            for provider, samples in latencies.items():
                key = names.breaker_window_key(provider, second)
                pipe.hincrby(key, "calls", len(samples))
                pipe.expire(key, self.config.window_s + 5)
                pipe.lpush(names.latency_key(provider), *(round(ms, 3) for ms in samples))
                pipe.ltrim(names.latency_key(provider), 0, LATENCY_SAMPLES - 1)
            await pipe.execute()

    def closed(self, provider: str) -> bool:
        """Is the cached view of this breaker plainly closed (no override, no probe)?
        Read after ``states`` or ``availability``, with no I/O."""
        cached = self._cache.get(provider)
        return (
            cached is not None and cached.override is None and cached.state is BreakerState.CLOSED
        )

    async def force(self, provider: str, override: Override | None) -> Breaker:
        """Drain (force open), force closed, or give control back to the numbers (None)."""

        def apply(b: Breaker) -> tuple[Breaker, Breaker]:
            if override is None:
                new = Breaker(state=b.state, opened_at=b.opened_at, override=None)
            else:
                new = Breaker(state=b.state, opened_at=b.opened_at, override=override)
            return new, new

        return await self._transition(provider, apply)

    async def stats(self, provider: str) -> ProviderStats:
        calls, failures = await self._window(provider, int(self.clock()))
        samples = sorted(
            float(v) for v in await self.redis.lrange(names.latency_key(provider), 0, -1)
        )
        p95 = (
            samples[min(len(samples) - 1, math.ceil(0.95 * len(samples)) - 1)] if samples else None
        )
        return ProviderStats(calls, failures, p95)

    async def _window(self, provider: str, second: int) -> tuple[int, int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for s in range(second - self.config.window_s + 1, second + 1):
                pipe.hmget(names.breaker_window_key(provider, s), "calls", "failures")
            buckets = await pipe.execute()
        calls = sum(int(c or 0) for c, _ in buckets)
        failures = sum(int(f or 0) for _, f in buckets)
        return calls, failures

    async def _transition(self, provider: str, fn: Callable[[Breaker], tuple[T, Breaker]]) -> T:
        key = names.breaker_key(provider)
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    current = Breaker.from_redis(await pipe.hgetall(key))
                    result, new = fn(current)
                    if new != current:
                        pipe.multi()
                        pipe.hset(key, mapping=new.to_redis())
                        await pipe.execute()
                    else:
                        await pipe.unwatch()
                except WatchError:
                    continue  # another worker changed it first: decide again on the new state
            self._cache[provider] = new
            return result
