"""Rate limiting (DESIGN §8): GCRA arithmetic, the limiters' contract, headers.

- Property tests for :func:`ratelimit.gcra.decide` (pure, no server).
- One contract class run over the in-memory and the Redis limiter, so neither can drift;
  it includes a replay of a random sequence against the pure arithmetic, which is what
  keeps the Lua copy of GCRA honest.
- Redis-only: exact admission under concurrency from two clients, server clock, expiry,
  errors wrapped.
- Headers.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.exceptions import RedisError

from herald import names
from herald.errors import InfrastructureError
from ratelimit import (
    Decision,
    Limit,
    MemoryRateLimiter,
    RateLimitBackendError,
    RateLimiter,
    RedisRateLimiter,
    decide,
    policy,
    rate_limit_headers,
)
from ratelimit.base import US_PER_S

REDIS_URL = "redis://127.0.0.1:6379/13"
#: A fake "now" of realistic size (epoch seconds), so µs precision is tested where it is
#: hardest: Lua's doubles near 2**50.
T0 = 1_700_000_000.0
FIVE_A_MINUTE = Limit(5, 60)  # one every 12 s, burst 5


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- GCRA properties ------------------------------------------------------------------

Event = tuple[int, int, Decision]  # (now_us, cost, decision)


@st.composite
def limits(draw: st.DrawFn) -> Limit:
    rate = draw(st.integers(1, 20))
    period_us = draw(st.integers(1, 10 * US_PER_S))
    burst = draw(st.integers(1, 10))
    return Limit(rate, period_us / US_PER_S, burst)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Limit, list[tuple[int, int]]]:
    """A limit and a request sequence: (gap before it in µs, cost). Gaps are often 0 or
    within a microsecond of a whole number of intervals, where off-by-one errors show."""
    limit = draw(limits())
    interval = limit.interval_us
    near_multiple = st.builds(
        lambda k, d: max(0, k * interval + d), st.integers(1, 3), st.integers(-1, 1)
    )
    gap = st.one_of(st.just(0), near_multiple, st.integers(1, 3 * interval))
    cost = st.integers(0, limit.burst)
    return limit, draw(st.lists(st.tuples(gap, cost), max_size=60))


def simulate(
    limit: Limit, requests: list[tuple[int, int]], start_us: int = 1_700_000_000 * US_PER_S
) -> tuple[list[Event], int | None, int]:
    """Run the requests through ``decide``; return the events, the stored TAT and the clock."""
    tat: int | None = None
    now = start_us
    events: list[Event] = []
    for gap, cost in requests:
        now += gap
        decision, tat = decide(limit, tat, now, cost)
        events.append((now, cost, decision))
    return events, tat, now


def period_us(limit: Limit) -> int:
    return round(limit.period_s * US_PER_S)


@settings(deadline=None)
@given(scenarios())
def test_never_more_than_burst_at_one_instant(
    scenario: tuple[Limit, list[tuple[int, int]]],
) -> None:
    limit, requests = scenario
    events, _, _ = simulate(limit, requests)
    spent: dict[int, int] = {}
    for now, cost, decision in events:
        if decision.allowed:
            spent[now] = spent.get(now, 0) + cost
    assert all(total <= limit.burst for total in spent.values())


@settings(deadline=None)
@given(scenarios())
def test_admitted_cost_in_any_window_is_bounded(
    scenario: tuple[Limit, list[tuple[int, int]]],
) -> None:
    """What GCRA guarantees, for admitted cost in a window of length L:

    - closed ``[a, a + L]``: at most ``burst + floor(L / T)``, hence at most
      ``burst + rate * L / period`` (T is rounded up, never down);
    - half-open ``[a, a + period)``: at most ``rate + burst - 1``.

    Proof sketch: each admission at t raises the TAT to at least ``max(TAT, t) + cost*T``
    and needs ``TAT_before + cost*T <= t + burst*T``. Chaining from the window's first
    admission at t1 >= a to its last at tk: ``total*T <= tk - t1 + burst*T``.

    Windows starting at an admitted request are the worst case, so checking those suffices.
    """
    limit, requests = scenario
    events, _, _ = simulate(limit, requests)
    admitted = [(now, cost) for now, cost, d in events if d.allowed]
    interval, period = limit.interval_us, period_us(limit)
    for i, (start, _) in enumerate(admitted):
        half_open = sum(c for t, c in admitted[i:] if t < start + period)
        assert half_open <= limit.rate + limit.burst - 1
        total = 0
        for end, cost in admitted[i:]:
            total += cost
            length = end - start
            assert total <= limit.burst + length // interval
            assert total * period <= limit.burst * period + limit.rate * length


@settings(deadline=None)
@given(scenarios(), st.data())
def test_remaining_is_exact_and_never_negative(
    scenario: tuple[Limit, list[tuple[int, int]]], data: st.DataObject
) -> None:
    """``remaining`` cost-1 requests at the same instant are allowed, and not one more."""
    limit, requests = scenario
    _, tat, now = simulate(limit, requests)
    now += data.draw(st.integers(0, 2 * limit.interval_us))
    decision, tat = decide(limit, tat, now, data.draw(st.integers(0, limit.burst)))
    assert 0 <= decision.remaining <= limit.burst
    for _ in range(decision.remaining):
        step, tat = decide(limit, tat, now, 1)
        assert step.allowed
    assert not decide(limit, tat, now, 1)[0].allowed


@settings(deadline=None)
@given(scenarios(), st.data())
def test_retry_after_is_exactly_when_the_request_fits(
    scenario: tuple[Limit, list[tuple[int, int]]], data: st.DataObject
) -> None:
    limit, requests = scenario
    _, tat, now = simulate(limit, requests)
    cost = data.draw(st.integers(0, limit.burst))
    decision, after = decide(limit, tat, now, cost)
    if decision.allowed:
        assert decision.retry_after_s == 0
        return
    assert decision.retry_after_s > 0
    assert after == max(tat or now, now)  # a refusal spends nothing
    wait = round(decision.retry_after_s * US_PER_S)
    assert decide(limit, tat, now + wait, cost)[0].allowed
    assert not decide(limit, tat, now + wait - 1, cost)[0].allowed


@settings(deadline=None)
@given(scenarios())
def test_reset_after_is_when_the_bucket_is_full_again(
    scenario: tuple[Limit, list[tuple[int, int]]],
) -> None:
    limit, requests = scenario
    events, tat, now = simulate(limit, requests)
    if not events:
        return
    wait = round(events[-1][2].reset_after_s * US_PER_S)
    assert decide(limit, tat, now + wait, 0)[0].remaining == limit.burst
    if wait > 0:
        assert decide(limit, tat, now + wait - 1, 0)[0].remaining == limit.burst - 1


@given(limits())
def test_a_fresh_key_admits_exactly_burst_at_once(limit: Limit) -> None:
    events, _, _ = simulate(limit, [(0, 1)] * (limit.burst + 1))
    assert [d.allowed for _, _, d in events] == [True] * limit.burst + [False]
    assert [d.remaining for _, _, d in events] == [*range(limit.burst - 1, -1, -1), 0]


def test_the_window_bound_is_reached() -> None:
    """A burst, then one request every T: ``burst + rate`` in the closed window of one
    period, so the property test's bound is tight, not merely true."""
    limit = Limit(4, 8, burst=3)  # T = 2 s
    requests = [(0, 1)] * 3 + [(2 * US_PER_S, 1)] * 4
    events, _, _ = simulate(limit, requests)
    assert all(d.allowed for _, _, d in events)
    assert events[-1][0] - events[0][0] == period_us(limit)
    assert len(events) == limit.burst + limit.rate


def test_limit_defaults_and_validation() -> None:
    assert Limit(10, 60).burst == 10
    assert Limit(10, 60, burst=3).burst == 3
    assert Limit(3, 1).interval_us == 333_334  # rounded up: never looser than nominal
    assert Limit(10, 0.1).interval_us == 10_000
    for bad in [(0, 60), (10, 0), (10, -1), (10, float("nan")), (10, 60, 0), (1, 86400, 40_000)]:
        with pytest.raises(ValueError):
            Limit(*bad)  # type: ignore[arg-type]


def test_cost_outside_zero_to_burst_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="cost"):
        decide(FIVE_A_MINUTE, None, 0, 6)
    with pytest.raises(ValueError, match="cost"):
        decide(FIVE_A_MINUTE, None, 0, -1)


# --- The contract, over every limiter ---------------------------------------------------


@pytest.fixture
async def redis_client() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture(params=["memory", "redis"])
def limiter(request: pytest.FixtureRequest) -> RateLimiter:
    if request.param == "memory":
        return MemoryRateLimiter()
    return RedisRateLimiter(request.getfixturevalue("redis_client"))


async def hits(
    limiter: RateLimiter, n: int, limit: Limit, now: float, key: str = "k"
) -> list[Decision]:
    return [await limiter.hit(key, limit, now=now) for _ in range(n)]


class TestLimiterContract:
    async def test_admits_the_burst_then_refuses(self, limiter: RateLimiter) -> None:
        decisions = await hits(limiter, 7, FIVE_A_MINUTE, T0)
        assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2

    async def test_remaining_counts_down(self, limiter: RateLimiter) -> None:
        decisions = await hits(limiter, 6, FIVE_A_MINUTE, T0)
        assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0]

    async def test_retry_after_and_reset_after(self, limiter: RateLimiter) -> None:
        decisions = await hits(limiter, 6, FIVE_A_MINUTE, T0)
        assert [d.retry_after_s for d in decisions] == [0, 0, 0, 0, 0, 12.0]
        assert [d.reset_after_s for d in decisions] == [12.0, 24.0, 36.0, 48.0, 60.0, 60.0]
        later = await limiter.hit("k", FIVE_A_MINUTE, now=T0 + 5)
        assert (later.allowed, later.retry_after_s, later.reset_after_s) == (False, 7.0, 55.0)

    async def test_recovers_exactly_after_retry_after(self, limiter: RateLimiter) -> None:
        refused = (await hits(limiter, 6, FIVE_A_MINUTE, T0))[-1]
        at = T0 + refused.retry_after_s
        assert not (await limiter.hit("k", FIVE_A_MINUTE, now=at - 0.001)).allowed
        again = await limiter.hit("k", FIVE_A_MINUTE, now=at)
        assert (again.allowed, again.remaining) == (True, 0)
        assert (await limiter.hit("k", FIVE_A_MINUTE, now=at)).retry_after_s == 12.0

    async def test_refused_requests_spend_nothing(self, limiter: RateLimiter) -> None:
        await hits(limiter, 5, FIVE_A_MINUTE, T0)
        for i in range(20):
            assert not (await limiter.hit("k", FIVE_A_MINUTE, now=T0 + i * 0.5)).allowed
        assert (await limiter.hit("k", FIVE_A_MINUTE, now=T0 + 12)).allowed

    async def test_full_again_after_reset_after(self, limiter: RateLimiter) -> None:
        last = (await hits(limiter, 3, FIVE_A_MINUTE, T0))[-1]
        assert last.reset_after_s == 36.0
        full = T0 + last.reset_after_s
        assert (await limiter.peek("k", FIVE_A_MINUTE, now=full - 0.001)).remaining == 3
        assert (await limiter.peek("k", FIVE_A_MINUTE, now=full)).remaining == 4
        assert [d.allowed for d in await hits(limiter, 6, FIVE_A_MINUTE, full)] == [True] * 5 + [
            False
        ]

    async def test_burst_above_the_rate(self, limiter: RateLimiter) -> None:
        limit = Limit(2, 10, burst=6)  # one every 5 s, six at once
        decisions = await hits(limiter, 7, limit, T0)
        assert [d.allowed for d in decisions] == [True] * 6 + [False]
        assert decisions[0].remaining == 5
        assert decisions[-1].retry_after_s == 5.0
        assert (await limiter.hit("k", limit, now=T0 + 5)).allowed
        assert not (await limiter.hit("k", limit, now=T0 + 5)).allowed

    async def test_burst_of_one_spaces_requests_out(self, limiter: RateLimiter) -> None:
        limit = Limit(10, 1, burst=1)  # one every 100 ms, never two at once
        first = await limiter.hit("k", limit, now=T0)
        assert (first.allowed, first.remaining) == (True, 0)
        early = await limiter.hit("k", limit, now=T0 + 0.05)
        assert (early.allowed, early.retry_after_s) == (False, 0.05)
        assert (await limiter.hit("k", limit, now=T0 + 0.1)).allowed
        assert (await limiter.hit("k", limit, now=T0 + 0.25)).allowed
        assert not (await limiter.hit("k", limit, now=T0 + 0.3)).allowed

    async def test_cost_above_one(self, limiter: RateLimiter) -> None:
        limit = Limit(10, 60)  # one unit every 6 s
        four = await limiter.hit("k", limit, cost=4, now=T0)
        assert (four.allowed, four.remaining, four.reset_after_s) == (True, 6, 24.0)
        seven = await limiter.hit("k", limit, cost=7, now=T0)
        assert (seven.allowed, seven.remaining, seven.retry_after_s) == (False, 6, 6.0)
        six = await limiter.hit("k", limit, cost=6, now=T0)
        assert (six.allowed, six.remaining) == (True, 0)
        three = await limiter.hit("k", limit, cost=3, now=T0)
        assert (three.allowed, three.retry_after_s) == (False, 18.0)
        assert (await limiter.hit("k", limit, cost=3, now=T0 + 18)).allowed

    async def test_cost_above_burst_is_a_caller_error(self, limiter: RateLimiter) -> None:
        with pytest.raises(ValueError, match="cost"):
            await limiter.hit("k", FIVE_A_MINUTE, cost=6, now=T0)
        with pytest.raises(ValueError, match="cost"):
            await limiter.peek("k", FIVE_A_MINUTE, cost=-1, now=T0)

    async def test_keys_are_independent(self, limiter: RateLimiter) -> None:
        await hits(limiter, 5, FIVE_A_MINUTE, T0, key="a")
        assert not (await limiter.hit("a", FIVE_A_MINUTE, now=T0)).allowed
        b = await limiter.hit("b", FIVE_A_MINUTE, now=T0)
        assert (b.allowed, b.remaining) == (True, 4)

    async def test_reset_gives_a_full_bucket(self, limiter: RateLimiter) -> None:
        await hits(limiter, 5, FIVE_A_MINUTE, T0, key="a")
        await hits(limiter, 5, FIVE_A_MINUTE, T0, key="b")
        await limiter.reset("a")
        await limiter.reset("never-seen")
        a = await limiter.hit("a", FIVE_A_MINUTE, now=T0)
        assert (a.allowed, a.remaining) == (True, 4)
        assert not (await limiter.hit("b", FIVE_A_MINUTE, now=T0)).allowed

    async def test_peek_spends_nothing(self, limiter: RateLimiter) -> None:
        peeks = [await limiter.peek("k", FIVE_A_MINUTE, cost=5, now=T0) for _ in range(3)]
        assert peeks == [Decision(True, 0, 0.0, 60.0)] * 3
        assert await limiter.hit("k", FIVE_A_MINUTE, cost=5, now=T0) == peeks[0]
        refused = await limiter.peek("k", FIVE_A_MINUTE, now=T0 + 1)
        assert refused == Decision(False, 0, 11.0, 59.0)
        assert await limiter.peek("k", FIVE_A_MINUTE, now=T0 + 1) == refused
        assert await limiter.hit("k", FIVE_A_MINUTE, now=T0 + 1) == refused

    async def test_default_clock(self, limiter: RateLimiter) -> None:
        limit = Limit(1, 3600)
        assert (await limiter.hit("k", limit)).allowed
        refused = await limiter.hit("k", limit)
        assert not refused.allowed
        assert 3590 < refused.retry_after_s <= 3600

    async def test_matches_the_reference_arithmetic(self, limiter: RateLimiter) -> None:
        """Replay a random mix of hits and peeks; every answer equals ``gcra.decide``'s."""
        rng = random.Random(5)
        keys = {"odd": Limit(7, 1.5, burst=3), "thirds": Limit(3, 1), "wide": Limit(1000, 60, 20)}
        tats: dict[str, int | None] = dict.fromkeys(keys)
        now = T0
        for _ in range(400):
            key = rng.choice(list(keys))
            limit = keys[key]
            now += rng.choice([0, 0, 1e-6, rng.uniform(0, 2 * limit.interval_us / US_PER_S)])
            cost, spend = rng.randint(0, limit.burst), rng.random() < 0.8
            now_us = round(now * US_PER_S)
            expected, tat = decide(limit, tats[key], now_us, cost)
            if spend:
                tats[key] = tat
                got = await limiter.hit(key, limit, cost=cost, now=now)
            else:
                got = await limiter.peek(key, limit, cost=cost, now=now)
            assert got == expected


# --- Redis only -------------------------------------------------------------------------


class TestRedisLimiter:
    async def test_exact_admission_across_two_clients(self, redis_client: Redis) -> None:
        """200 concurrent hits from two connection pools (two processes, in effect) on the
        server clock: exactly the burst is admitted, each with a distinct ``remaining``."""
        other = Redis.from_url(REDIS_URL)
        try:
            a, b = RedisRateLimiter(redis_client), RedisRateLimiter(other)
            limit = Limit(50, 60, burst=50)
            decisions = await asyncio.gather(
                *((a if i % 2 else b).hit("shared", limit) for i in range(200))
            )
        finally:
            await other.aclose()
        admitted = [d for d in decisions if d.allowed]
        assert len(admitted) == 50
        assert sorted(d.remaining for d in admitted) == list(range(50))

    async def test_decides_on_the_redis_server_clock(
        self, redis_client: Redis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        limiter = RedisRateLimiter(redis_client)
        limit = Limit(1, 60)
        with monkeypatch.context() as patched:
            patched.setattr(time, "time", lambda: 0.0)  # this host's clock is now nonsense
            assert (await limiter.hit("k", limit)).allowed
        seconds, micros = await redis_client.time()
        server_now_us = seconds * US_PER_S + micros
        stored = await redis_client.get(names.ratelimit_key("k"))
        assert stored is not None
        tat = int(stored)
        assert 0 < tat - server_now_us <= limit.interval_us

    async def test_state_expires_when_the_bucket_is_full(self, redis_client: Redis) -> None:
        limiter = RedisRateLimiter(redis_client)
        key = names.ratelimit_key("k")
        assert key == "herald:rl:k"
        await limiter.hit("k", FIVE_A_MINUTE, now=T0)
        assert 11_000 < await redis_client.pttl(key) <= 12_000
        await hits(limiter, 4, FIVE_A_MINUTE, T0)
        assert 59_000 < await redis_client.pttl(key) <= 60_000

    async def test_peek_writes_nothing(self, redis_client: Redis) -> None:
        limiter = RedisRateLimiter(redis_client)
        await limiter.peek("k", FIVE_A_MINUTE, now=T0)
        assert await redis_client.exists(names.ratelimit_key("k")) == 0

    async def test_survives_a_flushed_script_cache(self, redis_client: Redis) -> None:
        """A restarted Redis has forgotten the script: EVALSHA falls back to loading it."""
        limiter = RedisRateLimiter(redis_client)
        await limiter.hit("k", FIVE_A_MINUTE, now=T0)
        await redis_client.script_flush()
        assert (await limiter.hit("k", FIVE_A_MINUTE, now=T0)).remaining == 3

    async def test_unreachable_redis_raises_backend_error(self) -> None:
        client = Redis.from_url(f"redis://127.0.0.1:{free_port()}/13", socket_connect_timeout=2)
        limiter = RedisRateLimiter(client)
        try:
            calls: list[Callable[[], Awaitable[object]]] = [
                lambda: limiter.hit("k", FIVE_A_MINUTE),
                lambda: limiter.peek("k", FIVE_A_MINUTE, now=T0),
                lambda: limiter.reset("k"),
            ]
            for call in calls:
                with pytest.raises(RateLimitBackendError) as caught:
                    await call()
                assert isinstance(caught.value, InfrastructureError)
                assert isinstance(caught.value.__cause__, RedisError | OSError)
        finally:
            await client.aclose()

    async def test_an_error_reply_is_wrapped(self, redis_client: Redis) -> None:
        await redis_client.lpush(names.ratelimit_key("k"), "not a TAT")
        with pytest.raises(RateLimitBackendError, match="WRONGTYPE"):
            await RedisRateLimiter(redis_client).hit("k", FIVE_A_MINUTE, now=T0)


# --- Headers ----------------------------------------------------------------------------


def test_headers_when_allowed() -> None:
    decision, _ = decide(Limit(10, 60), None, 0)
    assert rate_limit_headers(decision, Limit(10, 60)) == {
        "RateLimit-Limit": "10",
        "RateLimit-Remaining": "9",
        "RateLimit-Reset": "6",
        "RateLimit-Policy": "10;w=60",
    }


def test_headers_when_refused_carry_retry_after() -> None:
    headers = rate_limit_headers(Decision(False, 0, 12.0, 60.0), FIVE_A_MINUTE)
    assert headers["Retry-After"] == "12"
    assert headers["RateLimit-Remaining"] == "0"
    assert headers["RateLimit-Reset"] == "60"


@pytest.mark.parametrize(
    ("retry_after_s", "header"),
    [(0.0, "1"), (0.000001, "1"), (0.4, "1"), (1.0, "1"), (2.2, "3"), (59.5, "60")],
)
def test_retry_after_rounds_up_to_at_least_one_second(retry_after_s: float, header: str) -> None:
    headers = rate_limit_headers(Decision(False, 0, retry_after_s, 60.0), FIVE_A_MINUTE)
    assert headers["Retry-After"] == header


@pytest.mark.parametrize(
    ("reset_after_s", "header"), [(0.0, "0"), (0.000001, "1"), (5.0, "5"), (5.2, "6")]
)
def test_reset_rounds_up(reset_after_s: float, header: str) -> None:
    headers = rate_limit_headers(Decision(True, 1, 0.0, reset_after_s), FIVE_A_MINUTE)
    assert headers["RateLimit-Reset"] == header
    assert "Retry-After" not in headers


def test_limit_header_is_the_burst_and_policy_names_it() -> None:
    limit = Limit(10, 60, burst=20)
    headers = rate_limit_headers(Decision(True, 19, 0.0, 6.0), limit)
    assert headers["RateLimit-Limit"] == "20"
    assert headers["RateLimit-Policy"] == "10;w=60;burst=20"


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        (Limit(10, 60), "10;w=60"),
        (Limit(100, 3600.0), "100;w=3600"),
        (Limit(5, 0.5), "10;w=1"),  # whole-second windows only: scaled, never rounded up
        (Limit(7, 1.5), "9;w=2"),
        (Limit(1, 60, burst=1), "1;w=60"),
    ],
)
def test_policy(limit: Limit, expected: str) -> None:
    assert policy(limit) == expected


def test_provider_limit_books_slots_at_most_the_wait_ahead() -> None:
    from workers.throttle import provider_limit

    assert provider_limit(10, 0.5) == Limit(rate=10, period_s=1.0, burst=6)
    assert provider_limit(50, 0.5).burst == 26
    slow = provider_limit(0.5, 0.5)  # one send every two seconds, no waiting in the call
    assert (slow.rate, slow.period_s, slow.burst) == (1, 2.0, 1)


async def test_the_rules_max_per_s_wins_over_the_adapters_default() -> None:
    from herald.domain import Channel
    from router.rules import ProviderSpec
    from workers.throttle import ProviderThrottle

    clock = [1000.0]
    throttle = ProviderThrottle(MemoryRateLimiter(clock=lambda: clock[0]), max_wait_s=0)
    unlimited = ProviderSpec("p", "twilio", Channel.SMS, {"default": 0.0})
    assert all([await throttle.wait_turn(unlimited) for _ in range(50)])
    by_default = [await throttle.wait_turn(unlimited, default_max_per_s=2) for _ in range(5)]
    assert by_default == [True, False, False, False, False]
    ruled = ProviderSpec("q", "twilio", Channel.SMS, {"default": 0.0}, max_per_s=100)
    for _ in range(10):  # 100/s from the rules, not the default's 1/s
        clock[0] += 0.011
        assert await throttle.wait_turn(ruled, default_max_per_s=1)
