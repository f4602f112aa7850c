"""Rate-limit algorithms over Redis (atomic Lua), policies and HTTP headers (see issue 5).

GCRA arithmetic lives in :mod:`ratelimit.gcra` (pure); the limiters store its state in
memory (tests, one process) or in Redis (shared, one round trip per decision).
"""

from ratelimit.base import Decision, Limit, RateLimitBackendError, RateLimiter
from ratelimit.gcra import decide
from ratelimit.headers import policy, rate_limit_headers
from ratelimit.memory import MemoryRateLimiter
from ratelimit.redis import RedisRateLimiter

__all__ = [
    "Decision",
    "Limit",
    "MemoryRateLimiter",
    "RateLimitBackendError",
    "RateLimiter",
    "RedisRateLimiter",
    "decide",
    "policy",
    "rate_limit_headers",
]
