"""Unit tests for the retry schedule (DESIGN §7): exponential, full jitter, capped, bucketed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.settings import BackoffPolicy, Settings
from workers.backoff import backoff_ceiling, backoff_delay, retry_bucket_ms

DEFAULT = BackoffPolicy()  # 1 s base, x2, 5 min cap
EXACT = BackoffPolicy(jitter=False)
BUCKETS = Settings.model_fields["retry_buckets_ms"].default

attempts = st.integers(min_value=1, max_value=64)
bases = st.floats(min_value=0.001, max_value=60, allow_nan=False)
factors = st.floats(min_value=1, max_value=10, allow_nan=False)
caps = st.floats(min_value=0.001, max_value=3600, allow_nan=False)
unit = st.floats(min_value=0, max_value=1, exclude_max=True, allow_nan=False)


def test_ceiling_doubles_from_the_base_with_the_defaults() -> None:
    assert [backoff_ceiling(n, DEFAULT) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 64, 128]


def test_ceiling_is_capped() -> None:
    assert backoff_ceiling(9, DEFAULT) == 256
    assert backoff_ceiling(10, DEFAULT) == 300
    assert backoff_ceiling(40, DEFAULT) == 300


def test_ceiling_uses_the_policy_base_factor_and_cap() -> None:
    policy = BackoffPolicy(base_s=5, factor=3, cap_s=100)
    assert [backoff_ceiling(n, policy) for n in range(1, 5)] == [5, 15, 45, 100]


def test_attempt_zero_or_below_is_treated_as_the_first() -> None:
    assert backoff_ceiling(0, DEFAULT) == backoff_ceiling(1, DEFAULT) == 1


@given(attempt=attempts, base=bases, factor=factors, cap=caps)
def test_ceiling_never_decreases_and_never_exceeds_the_cap(
    attempt: int, base: float, factor: float, cap: float
) -> None:
    policy = BackoffPolicy(base_s=base, factor=factor, cap_s=cap)
    now, after = backoff_ceiling(attempt, policy), backoff_ceiling(attempt + 1, policy)
    assert 0 < now <= after <= cap


@given(attempt=attempts, base=bases, factor=factors, cap=caps, r=unit)
def test_full_jitter_stays_within_zero_and_the_ceiling(
    attempt: int, base: float, factor: float, cap: float, r: float
) -> None:
    policy = BackoffPolicy(base_s=base, factor=factor, cap_s=cap)
    delay = backoff_delay(attempt, policy, rand=lambda: r)
    assert 0 <= delay <= backoff_ceiling(attempt, policy)


def test_full_jitter_spreads_over_the_whole_range() -> None:
    assert backoff_delay(4, DEFAULT, rand=lambda: 0.0) == 0
    assert backoff_delay(4, DEFAULT, rand=lambda: 0.5) == 4
    assert backoff_delay(4, DEFAULT, rand=lambda: 0.999) == pytest.approx(7.992)


def test_full_jitter_with_the_real_random_source_stays_in_range_and_varies() -> None:
    delays = [backoff_delay(5, DEFAULT) for _ in range(200)]
    assert all(0 <= d <= 16 for d in delays)
    assert len(set(delays)) > 100


@given(attempt=attempts, base=bases, factor=factors, cap=caps)
def test_without_jitter_the_delay_is_exactly_the_ceiling(
    attempt: int, base: float, factor: float, cap: float
) -> None:
    policy = BackoffPolicy(base_s=base, factor=factor, cap_s=cap, jitter=False)
    delay = backoff_delay(attempt, policy, rand=lambda: 0.0)
    assert delay == backoff_ceiling(attempt, policy)


def test_without_jitter_the_schedule_is_predictable() -> None:
    assert [backoff_delay(n, EXACT) for n in (1, 2, 3, 12)] == [1, 2, 4, 300]


def test_retry_after_longer_than_the_jittered_delay_is_honoured() -> None:
    assert backoff_delay(1, DEFAULT, rand=lambda: 0.5, retry_after=42) == 42


def test_retry_after_shorter_than_the_delay_does_not_shorten_it() -> None:
    assert backoff_delay(5, EXACT, retry_after=1) == 16
    assert backoff_delay(5, DEFAULT, rand=lambda: 0.5, retry_after=1) == 8


def test_retry_after_is_capped_at_cap_s() -> None:
    assert backoff_delay(1, DEFAULT, rand=lambda: 0.1, retry_after=3600) == 300
    otp = BackoffPolicy(base_s=1, factor=2, cap_s=30)
    assert backoff_delay(1, otp, rand=lambda: 0.1, retry_after=86400) == 30


@given(attempt=attempts, r=unit, retry_after=st.floats(min_value=0, max_value=1e6))
def test_retry_after_delay_is_at_least_the_hint_up_to_the_cap(
    attempt: int, r: float, retry_after: float
) -> None:
    delay = backoff_delay(attempt, DEFAULT, rand=lambda: r, retry_after=retry_after)
    assert min(retry_after, DEFAULT.cap_s) <= delay <= DEFAULT.cap_s


# Retry buckets ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delay_s", "bucket"),
    [
        (1.0, 1000),
        (1.999, 1000),
        (2.0, 2000),
        (7.5, 4000),
        (250, 128000),
        (300, 300000),
        (10_000, 300000),
    ],
)
def test_bucket_is_the_largest_not_above_the_delay(delay_s: float, bucket: int) -> None:
    assert retry_bucket_ms(delay_s, BUCKETS) == bucket


@pytest.mark.parametrize("delay_s", [0.0, 0.2, 0.999])
def test_delay_below_every_bucket_gets_the_smallest(delay_s: float) -> None:
    assert retry_bucket_ms(delay_s, BUCKETS) == 1000


def test_bucket_order_in_the_setting_does_not_matter() -> None:
    assert retry_bucket_ms(5, [8000, 1000, 4000, 2000]) == 4000
    assert retry_bucket_ms(0.1, [8000, 1000, 4000, 2000]) == 1000


@given(
    delay_s=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    buckets=st.lists(st.integers(min_value=1, max_value=10_000_000), min_size=1, max_size=12),
)
def test_bucket_is_always_a_configured_one_never_above_the_delay_or_the_smallest(
    delay_s: float, buckets: list[int]
) -> None:
    bucket = retry_bucket_ms(delay_s, buckets)
    assert bucket in buckets
    assert bucket <= max(delay_s * 1000, min(buckets))
    # and it is the largest such bucket: no configured bucket fits more closely
    assert not [b for b in buckets if bucket < b <= delay_s * 1000]


def test_a_vendor_retry_after_rounds_up_to_the_next_retry_queue() -> None:
    buckets = [1000, 2000, 4000, 8000]
    assert retry_bucket_ms(3.0, buckets) == 2000  # plain backoff rounds down …
    assert retry_bucket_ms(3.0, buckets, at_least_s=3.0) == 4000  # … a Retry-After never
    assert retry_bucket_ms(0.5, buckets, at_least_s=0.2) == 1000
    assert retry_bucket_ms(1.0, buckets, at_least_s=60) == 8000  # beyond the last: the last
