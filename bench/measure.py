"""Small, dependency-free statistics and bounded polling used by every scenario."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100): no interpolation between samples."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def latency_summary(values_ms: Sequence[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values_ms),
        "p50": percentile(values_ms, 50),
        "p90": percentile(values_ms, 90),
        "p99": percentile(values_ms, 99),
        "max": max(values_ms) if values_ms else None,
        "mean": sum(values_ms) / len(values_ms) if values_ms else None,
    }


async def wait_for(
    check: Callable[[], Awaitable[T]],
    ok: Callable[[T], bool],
    *,
    limit_s: float,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    """Poll ``check`` until ``ok`` holds; bounded by ``limit_s`` (raises TimeoutError)."""
    deadline = time.monotonic() + limit_s
    while True:
        value = await check()
        if ok(value):
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: still {value!r} after {limit_s:.0f}s")
        await asyncio.sleep(interval)


@dataclass(slots=True)
class Progress:
    """(wall time, count) samples of a drain, for its total and steady-state rates."""

    target: int
    started_at: float
    samples: list[tuple[float, int]] = field(default_factory=list)

    def add(self, at: float, count: int) -> None:
        self.samples.append((at, count))

    def time_reaching(self, count: float) -> float | None:
        """First time the count reached ``count``, interpolated between two samples."""
        previous = (self.started_at, 0)
        for at, value in self.samples:
            if value >= count:
                t0, v0 = previous
                if value == v0:
                    return at
                return t0 + (at - t0) * (count - v0) / (value - v0)
            previous = (at, value)
        return None

    @property
    def done_at(self) -> float | None:
        return self.time_reaching(self.target)

    def total_rate(self) -> float | None:
        """Messages per second from process start to the last one done (startup included)."""
        done = self.done_at
        return self.target / (done - self.started_at) if done else None

    def steady_rate(self, low: float = 0.1, high: float = 0.9) -> float | None:
        """Messages per second between 10 % and 90 % done: start-up and tail excluded."""
        t_low = self.time_reaching(self.target * low)
        t_high = self.time_reaching(self.target * high)
        if t_low is None or t_high is None or t_high <= t_low:
            return None
        return self.target * (high - low) / (t_high - t_low)

    def summary(self) -> dict[str, float | int | None]:
        done = self.done_at
        return {
            "count": self.target,
            "elapsed_s": (done - self.started_at) if done else None,
            "rate_total": self.total_rate(),
            "rate_steady": self.steady_rate(),
            "samples": len(self.samples),
        }


async def track(
    count: Callable[[], Awaitable[int]],
    progress: Progress,
    *,
    limit_s: float,
    interval: float,
    alive: Callable[[], None] | None = None,
    on_sample: Callable[[float, int], Awaitable[None]] | None = None,
) -> Progress:
    """Sample ``count`` until it reaches the target; bounded by ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if alive is not None:
            alive()
        value = await count()
        now = time.time()
        progress.add(now, value)
        if on_sample is not None:
            await on_sample(now, value)
        if value >= progress.target:
            return progress
        await asyncio.sleep(interval)
    reached = progress.samples[-1][1] if progress.samples else 0
    raise TimeoutError(f"drain: {reached} of {progress.target} after {limit_s:.0f}s")
