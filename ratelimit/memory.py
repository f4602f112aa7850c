"""An in-memory limiter for tests and single-process use: one dict of TATs.

Each call reads and writes the dict with no ``await`` in between, so concurrent tasks on
one event loop cannot interleave inside a decision; no lock is needed. Not thread-safe,
and state is per process: several processes must use the Redis limiter.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ratelimit.base import Decision, Limit, RateLimiter, to_us
from ratelimit.gcra import decide

_MIN_SWEEP = 1024


class MemoryRateLimiter(RateLimiter):
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._tats: dict[str, int] = {}
        self._sweep_at = _MIN_SWEEP

    async def hit(
        self, key: str, limit: Limit, *, cost: int = 1, now: float | None = None
    ) -> Decision:
        now_us = to_us(self._clock() if now is None else now)
        decision, tat = decide(limit, self._tats.get(key), now_us, cost)
        if tat > now_us:
            self._tats[key] = tat
            if len(self._tats) > self._sweep_at:
                self._sweep(now_us)
        else:  # a full bucket is the same as no entry
            self._tats.pop(key, None)
        return decision

    async def peek(
        self, key: str, limit: Limit, *, cost: int = 1, now: float | None = None
    ) -> Decision:
        now_us = to_us(self._clock() if now is None else now)
        return decide(limit, self._tats.get(key), now_us, cost)[0]

    async def reset(self, key: str) -> None:
        self._tats.pop(key, None)

    def _sweep(self, now_us: int) -> None:
        """Drop keys whose bucket is full again (the Redis limiter's PX expiry, amortised)."""
        self._tats = {key: tat for key, tat in self._tats.items() if tat > now_us}
        self._sweep_at = max(_MIN_SWEEP, 2 * len(self._tats))
