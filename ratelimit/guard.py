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
        """Spend one unit from every check, in order; stop at the first refusal."""
        tightest: tuple[Decision, Limit, str] | None = None
        for check in checks:
            try:
                decision = await self.shared.hit(check.key, check.limit)
            except RateLimitBackendError as exc:
                if check.fail_closed:
                    log.warning("ratelimit_backend_down", policy=check.policy, error=str(exc))
                    return Verdict(False, None, check.limit, check.policy, backend_down=True)
                FALLBACKS.labels(check.policy).inc()
                decision = await self.local.hit(check.key, check.limit)
            if not decision.allowed:
                return Verdict(False, decision, check.limit, check.policy)
            if tightest is None or decision.remaining < tightest[0].remaining:
                tightest = (decision, check.limit, check.policy)
        if tightest is None:
            return Verdict(True, None, None, None)
        return Verdict(True, *tightest)
