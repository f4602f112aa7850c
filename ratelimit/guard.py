"""Apply several limits to one request and pick the answer a caller should see.

General limits fail open when Redis is unreachable: a local in-memory limiter takes
over (each process then enforces the limit on its own) and a metric counts it. Limits
that protect OTPs fail closed: without Redis the request is refused with ``503``.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter

from herald.logs import get_logger
from ratelimit.base import Decision, Limit, RateLimitBackendError, RateLimiter
from ratelimit.memory import MemoryRateLimiter

log = get_logger(__name__)
FALLBACKS = Counter(
    "herald_ratelimit_fallback_total",
    "Rate-limit decisions taken locally because Redis was unreachable",
    ["policy"],
)


@dataclass(frozen=True, slots=True)
class Check:
    policy: str  # a name a caller can read: "api_key", "recipient", "otp_cooldown", …
    key: str
    limit: Limit
    fail_closed: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    decision: Decision | None  # the tightest (or the refusing) decision, for the headers
    limit: Limit | None
    policy: str | None
    backend_down: bool = False  # a fail-closed check could not be decided


class Guard:
    def __init__(self, shared: RateLimiter, local: RateLimiter | None = None) -> None:
        self.shared = shared
        self.local = local or MemoryRateLimiter()

    async def check(self, checks: list[Check]) -> Verdict:
        """Spend one unit from every check, in order; stop at the first refusal.

        All checks go to the shared limiter in one call. If it cannot answer, the checks
        are taken in order locally: a fail-closed one answers ``backend_down``, the others
        spend from the local limiter."""
        try:
            decisions = await self.shared.hit_many([(c.key, c.limit) for c in checks])
        except RateLimitBackendError as exc:
            return await self._locally(checks, exc)
        return _verdict(list(zip(checks, decisions, strict=False)))

    async def _locally(self, checks: list[Check], exc: RateLimitBackendError) -> Verdict:
        decided: list[tuple[Check, Decision]] = []
        for check in checks:
            if check.fail_closed:
                log.warning("ratelimit_backend_down", policy=check.policy, error=str(exc))
                return Verdict(False, None, check.limit, check.policy, backend_down=True)
            FALLBACKS.labels(check.policy).inc()
            decision = await self.local.hit(check.key, check.limit)
            decided.append((check, decision))
            if not decision.allowed:
                break
        return _verdict(decided)


def _verdict(decided: list[tuple[Check, Decision]]) -> Verdict:
    """The refusal if the last decision is one, else the tightest allowed decision."""
    tightest: tuple[Decision, Limit, str] | None = None
    for check, decision in decided:
        if not decision.allowed:
            return Verdict(False, decision, check.limit, check.policy)
        if tightest is None or decision.remaining < tightest[0].remaining:
            tightest = (decision, check.limit, check.policy)
    if tightest is None:
        return Verdict(True, None, None, None)
    return Verdict(True, *tightest)
