"""A provider's ``max_per_s``, held across every worker with one atomic Redis call per send.

Each send reserves the next free slot of the provider's schedule (GCRA with a tolerance
of ``max_wait_s``) and waits in the call until its slot, at most a fraction of a second,
as a tenacity-style in-call wait would. When the next free slot is further away, the
send is refused at once: the delivery tries the next candidate or a retry queue.
"""

from __future__ import annotations

import asyncio
import math

from ratelimit import Limit, RateLimiter
from router.rules import ProviderSpec


def provider_limit(max_per_s: float, max_wait_s: float) -> Limit:
    """Sends spaced ``1 / max_per_s`` apart; a slot may be booked up to ``max_wait_s`` ahead."""
    if max_per_s >= 1:
        rate, period = math.floor(max_per_s), 1.0
    else:
        rate, period = 1, 1 / max_per_s
    interval = period / rate
    return Limit(rate=rate, period_s=period, burst=math.floor(max_wait_s / interval) + 1)


class ProviderThrottle:
    def __init__(self, limiter: RateLimiter, *, max_wait_s: float = 0.5) -> None:
        self.limiter = limiter
        self.max_wait_s = max_wait_s

    async def wait_turn(self, spec: ProviderSpec, default_max_per_s: float | None = None) -> bool:
        """Wait for this send's slot; False (at once) when none is free soon enough.

        The rules document's ``max_per_s`` wins; else the vendor adapter's own default.
        """
        max_per_s = spec.max_per_s or default_max_per_s
        if not max_per_s:
            return True
        limit = provider_limit(max_per_s, self.max_wait_s)
        decision = await self.limiter.hit(f"provider:{spec.name}", limit)
        if not decision.allowed:
            return False
        # The slot booked starts one interval before the schedule's new end.
        wait = decision.reset_after_s - limit.period_s / limit.rate
        if wait > 0:
            await asyncio.sleep(wait)
        return True
