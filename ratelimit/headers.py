"""HTTP response headers for a rate-limit decision (pure).

The fields of draft-ietf-httpapi-ratelimit-headers up to -06 (the last revision with the
three separate fields, which is what clients and proxies understand today):

- ``RateLimit-Limit``: the bucket's capacity, ``burst``; ``RateLimit-Remaining`` counts
  down from it, so the two stay comparable even when ``burst`` differs from ``rate``.
- ``RateLimit-Remaining``: further cost-1 requests allowed right now.
- ``RateLimit-Reset``: whole seconds (rounded up) until the bucket is full again.
- ``RateLimit-Policy``: ``rate;w=window``, e.g. ``10;w=60``, plus ``;burst=N`` (an
  informative extension parameter) when the burst is not the rate.
- ``Retry-After``: only when refused; whole seconds, rounded up, at least 1 (a client
  retrying after ``0`` would be refused again).
"""

from __future__ import annotations

import math

from ratelimit.base import Decision, Limit


def policy(limit: Limit) -> str:
    """``quota;w=seconds``. The window must be whole seconds: a fractional period becomes
    the next whole second with the quota scaled down (never advertises more than allowed).
    """
    window = max(1, math.ceil(limit.period_s))
    quota = (
        limit.rate if window == limit.period_s else math.floor(limit.rate * window / limit.period_s)
    )
    text = f"{quota};w={window}"
    if limit.burst != limit.rate:
        text += f";burst={limit.burst}"
    return text


def rate_limit_headers(decision: Decision, limit: Limit) -> dict[str, str]:
    headers = {
        "RateLimit-Limit": str(limit.burst),
        "RateLimit-Remaining": str(decision.remaining),
        "RateLimit-Reset": str(math.ceil(decision.reset_after_s)),
        "RateLimit-Policy": policy(limit),
    }
    if not decision.allowed:
        headers["Retry-After"] = str(max(1, math.ceil(decision.retry_after_s)))
    return headers
