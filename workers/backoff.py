"""Retry delays: exponential backoff with full jitter, snapped onto fixed-TTL retry queues."""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Sequence

from config.settings import BackoffPolicy


def backoff_ceiling(attempt: int, policy: BackoffPolicy) -> float:
    """The largest delay allowed after failed attempt number ``attempt`` (1-based)."""
    return min(policy.cap_s, policy.base_s * policy.factor ** max(attempt - 1, 0))


def backoff_delay(
    attempt: int,
    policy: BackoffPolicy,
    *,
    rand: Callable[[], float] = random.random,
    retry_after: float | None = None,
) -> float:
    """Full jitter (uniform in [0, ceiling]), never sooner than the vendor's ``Retry-After``.

    ``jitter=False`` gives the bare exponential schedule (predictable, for tests and demos).
    """
    ceiling = backoff_ceiling(attempt, policy)
    delay = rand() * ceiling if policy.jitter else ceiling
    if retry_after is not None:
        delay = max(delay, min(retry_after, policy.cap_s))
    return delay


def retry_bucket_ms(
    delay_s: float, buckets_ms: Sequence[int], *, at_least_s: float | None = None
) -> int:
    """The retry queue to use: the largest bucket not above the delay (the smallest at least).

    Rounding down keeps the jitter's spread and never waits longer than the policy asked;
    but a vendor's ``Retry-After`` (``at_least_s``) is a floor, so that rounds up.
    """
    ordered = sorted(buckets_ms)
    index = bisect.bisect_right(ordered, delay_s * 1000) - 1
    bucket = ordered[max(index, 0)]
    if at_least_s is not None and bucket < at_least_s * 1000:
        floor = bisect.bisect_left(ordered, at_least_s * 1000)
        bucket = ordered[min(floor, len(ordered) - 1)]
    return bucket
