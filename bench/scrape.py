"""Read a Herald worker's /metrics and summarise its histograms (count, mean, p50, p99).

Used for the batched delivery lanes' ``herald_delivery_batch_size`` and
``herald_delivery_batch_wait_seconds``: a histogram a given Herald version does not
export summarises to ``None`` everywhere, which the table prints as "n/a", so the same
bench runs before and after the change. Percentiles come from the cumulative buckets, so
they are only as fine as the buckets: for a wait, interpolated linearly inside the
bucket that holds the rank (Prometheus' ``histogram_quantile``); for a batch size, the
upper bound of that bucket, since sizes are whole numbers and interpolating in (0, 1]
would print a batch of one as 0.5.
"""

from __future__ import annotations

import math
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

BATCH_SIZE = "herald_delivery_batch_size"
BATCH_WAIT = "herald_delivery_batch_wait_seconds"


async def fetch(url: str, limit_s: float = 5.0) -> str | None:
    """The exposition text at ``url``; None when the worker serves none."""
    try:
        async with httpx.AsyncClient(timeout=limit_s) as client:
            response = await client.get(url)
    except httpx.HTTPError:
        return None
    return response.text if response.status_code == 200 else None


def _quantile(
    q: float, buckets: list[tuple[float, float]], count: float, interpolate: bool
) -> float | None:
    """``histogram_quantile`` over (upper bound, cumulative count) pairs, sorted; without
    ``interpolate``, the upper bound of the bucket that holds the rank."""
    if count <= 0 or not buckets:
        return None
    rank = q * count
    lower, below = 0.0, 0.0
    for upper, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(upper):
                return lower  # beyond the last finite bucket: its bound is all we know
            if not interpolate:
                return upper
            inside = cumulative - below
            share = (rank - below) / inside if inside else 1.0
            return lower + (upper - lower) * share
        lower, below = upper, cumulative
    return lower


def _summary(
    buckets: dict[float, float], count: float, total: float, interpolate: bool
) -> dict[str, Any]:
    ordered = sorted(buckets.items())
    return {
        "present": True,
        "count": count,
        "sum": total,
        "mean": total / count if count else None,
        "p50": _quantile(0.5, ordered, count, interpolate),
        "p99": _quantile(0.99, ordered, count, interpolate),
    }


def histogram(text: str | None, name: str, *, interpolate: bool = True) -> dict[str, Any]:
    """count / sum / mean / p50 / p99 of histogram ``name``, all label sets added up, and
    the same per label set under ``series`` (e.g. ``stage=start`` and ``stage=settle``:
    one batch observed at two stages is two observations in the total)."""
    empty: dict[str, Any] = {"present": False, "count": None, "mean": None, "p50": None}
    empty.update(p99=None, sum=None, series={})
    if not text:
        return empty
    # Per label set (without ``le``): bucket bound -> cumulative count, count, sum.
    parts: dict[str, tuple[dict[float, float], list[float]]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "le")
            buckets, sums = parts.setdefault(labels, ({}, [0.0, 0.0]))
            if sample.name == f"{name}_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
            elif sample.name == f"{name}_count":
                sums[0] += sample.value
            elif sample.name == f"{name}_sum":
                sums[1] += sample.value
    if not parts:
        return empty
    all_buckets: dict[float, float] = {}
    for buckets, _ in parts.values():
        for bound, value in buckets.items():
            all_buckets[bound] = all_buckets.get(bound, 0.0) + value
    count = sum(sums[0] for _, sums in parts.values())
    total = sum(sums[1] for _, sums in parts.values())
    result = _summary(all_buckets, count, total, interpolate)
    result["series"] = {
        labels: _summary(buckets, sums[0], sums[1], interpolate)
        for labels, (buckets, sums) in sorted(parts.items())
    }
    return result


async def batch_histograms(metrics_urls: list[str]) -> dict[str, Any]:
    """Both batch histograms, summed over every worker process scraped."""
    texts = [await fetch(url) for url in metrics_urls]
    joined = "\n".join(t for t in texts if t)
    return {
        "scraped": sum(1 for t in texts if t),
        BATCH_SIZE: histogram(joined, BATCH_SIZE, interpolate=False),
        BATCH_WAIT: histogram(joined, BATCH_WAIT),
    }
