"""The rate-limiter interface, its value types and its one error type.

A limiter answers "may ``key`` spend ``cost`` units now?" under a :class:`Limit`. The
arithmetic (GCRA, in :mod:`ratelimit.gcra`) is separate from where its state lives: the
in-memory and Redis limiters store one number per key and share the same contract tests.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import dataclass

from herald.errors import InfrastructureError

US_PER_S = 1_000_000
#: The largest span of state a key may hold (``burst`` intervals). Redis runs Lua with
#: doubles, exact for integers below 2**53 µs (285 years): an epoch time plus twice this
#: span stays well inside that.
MAX_SPAN_US = 100 * 365 * 86_400 * US_PER_S


class RateLimitBackendError(InfrastructureError):
    """The limiter's storage failed (Redis down, timed out, answered with an error).

    The cause is chained (``raise ... from``); callers decide whether to fail open or closed.
    """


@dataclass(frozen=True, slots=True, init=False)
class Limit:
    """``rate`` requests per ``period_s`` seconds, with up to ``burst`` at once.

    ``burst`` (default ``rate``) is the bucket's capacity: a fresh key admits ``burst``
    requests at the same instant, then one per ``period_s / rate`` seconds.
    """

    rate: int
    period_s: float
    burst: int

    def __init__(self, rate: int, period_s: float, burst: int | None = None) -> None:
        burst = rate if burst is None else burst
        if not (isinstance(rate, int) and rate >= 1):
            raise ValueError(f"rate must be an integer >= 1, not {rate!r}")
        if not (math.isfinite(period_s) and round(period_s * US_PER_S) >= 1):
            raise ValueError(f"period_s must be at least one microsecond, not {period_s!r}")
        if not (isinstance(burst, int) and burst >= 1):
            raise ValueError(f"burst must be an integer >= 1, not {burst!r}")
        object.__setattr__(self, "rate", rate)
        object.__setattr__(self, "period_s", period_s)
        object.__setattr__(self, "burst", burst)
        if burst * self.interval_us > MAX_SPAN_US:
            raise ValueError(f"{self} spans more than 100 years of state")

    @property
    def interval_us(self) -> int:
        """The emission interval ``period / rate`` in whole microseconds, rounded up.

        Rounding up makes the limiter at most 1 µs per request stricter than nominal, never
        looser, and keeps every stored time an integer (identical in Python and in Lua).
        """
        return -(-round(self.period_s * US_PER_S) // self.rate)

    def __str__(self) -> str:
        return f"{self.rate}/{self.period_s:g}s (burst {self.burst})"


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one request.

    - ``allowed``: the request may go ahead (and, for ``hit``, its cost was spent).
    - ``remaining``: how many further cost-1 requests would be allowed at this instant.
    - ``retry_after_s``: 0 when allowed; else the wait after which the same request is
      allowed (if nothing else spends from the key meanwhile).
    - ``reset_after_s``: the wait until the key is back to its full ``burst``.
    """

    allowed: bool
    remaining: int
    retry_after_s: float
    reset_after_s: float


def to_us(seconds: float) -> int:
    """Seconds (e.g. an epoch time) to whole microseconds, the unit of all stored state."""
    return round(seconds * US_PER_S)


def check_cost(limit: Limit, cost: int) -> None:
    """A cost above ``burst`` can never be admitted: that is the caller's bug, not a 429."""
    if not (isinstance(cost, int) and 0 <= cost <= limit.burst):
        raise ValueError(f"cost must be an integer in [0, burst={limit.burst}], not {cost!r}")


class RateLimiter(abc.ABC):
    """Rate limiting per key. ``now`` (epoch seconds) overrides the limiter's clock."""

    @abc.abstractmethod
    async def hit(
        self, key: str, limit: Limit, *, cost: int = 1, now: float | None = None
    ) -> Decision:
        """Ask to spend ``cost`` units from ``key``; spent only when the answer is allowed."""

    @abc.abstractmethod
    async def peek(
        self, key: str, limit: Limit, *, cost: int = 1, now: float | None = None
    ) -> Decision:
        """What :meth:`hit` would answer now, spending nothing."""

    @abc.abstractmethod
    async def reset(self, key: str) -> None:
        """Forget ``key``: its next request sees a full bucket."""

    async def hit_many(
        self, requests: Sequence[tuple[str, Limit]], *, now: float | None = None
    ) -> list[Decision]:
        """:meth:`hit` (cost 1) on each ``(key, limit)`` in order, stopping at the first
        refusal: the decisions up to and including it. Earlier keys stay spent, as if hit
        one by one; a limiter over a remote store makes this one round trip."""
        decisions: list[Decision] = []
        for key, limit in requests:
            decision = await self.hit(key, limit, now=now)
            decisions.append(decision)
            if not decision.allowed:
                break
        return decisions
