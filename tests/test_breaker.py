"""Circuit breakers: pure transitions (with properties), then the Redis board shared by workers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis

from router.breaker import (
    Breaker,
    BreakerConfig,
    BreakerState,
    Override,
    after_probe,
    after_window,
    looks_available,
    request_send,
)
from router.health import BreakerBoard

CFG = BreakerConfig(window_s=10, min_calls=10, failure_rate=0.5, cooldown_s=5, probes=3)


def test_trips_only_with_enough_calls_and_a_high_failure_rate() -> None:
    closed = Breaker()
    assert after_window(closed, 9, 9, 100, CFG).state is BreakerState.CLOSED  # too few calls
    assert after_window(closed, 10, 4, 100, CFG).state is BreakerState.CLOSED  # 40 % < 50 %
    opened = after_window(closed, 10, 5, 100, CFG)
    assert opened.state is BreakerState.OPEN and opened.opened_at == 100


def test_open_waits_for_the_cool_down_then_lets_a_bounded_number_of_probes_through() -> None:
    b = Breaker(BreakerState.OPEN, opened_at=100)
    allowed, b = request_send(b, 104.9, CFG)
    assert not allowed and b.state is BreakerState.OPEN
    decisions = []
    for _ in range(5):
        allowed, b = request_send(b, 105.0, CFG)
        decisions.append(allowed)
    assert decisions == [True, True, True, False, False]
    assert b.state is BreakerState.HALF_OPEN


def test_a_new_probe_round_waits_for_the_last_rounds_calls_to_time_out() -> None:
    """A slow vendor (calls that take the whole 10 s timeout) with a 5 s cool-down: the
    probes of one round are still in their calls when the cool-down ends. Another round
    then would be three more possible sends to a vendor that is only slow."""
    slow = BreakerConfig(cooldown_s=5, probes=3, probe_timeout_s=11)
    b = Breaker(BreakerState.HALF_OPEN, opened_at=100, probes_started=3)
    assert request_send(b, 106, slow)[0] is False  # past the cool-down, not the timeout
    assert not looks_available(b, 106, slow)
    allowed, b = request_send(b, 111, slow)  # the round never answered: its calls are over
    assert allowed and b.probes_started == 1 and b.opened_at == 111
    assert request_send(Breaker(BreakerState.HALF_OPEN, 100, 3), 106, CFG)[0] is True


def test_probe_successes_close_and_one_probe_failure_reopens() -> None:
    half = Breaker(BreakerState.HALF_OPEN, opened_at=100, probes_started=3)
    b = after_probe(half, True, 106, CFG)
    b = after_probe(b, True, 106, CFG)
    assert b.state is BreakerState.HALF_OPEN
    assert after_probe(b, True, 106, CFG).state is BreakerState.CLOSED
    reopened = after_probe(b, False, 107, CFG)
    assert reopened.state is BreakerState.OPEN and reopened.opened_at == 107


def test_overrides_beat_the_numbers() -> None:
    drained = Breaker(override=Override.OPEN)
    assert request_send(drained, 0, CFG)[0] is False
    assert not looks_available(drained, 0, CFG)
    forced = Breaker(BreakerState.OPEN, opened_at=100, override=Override.CLOSED)
    assert request_send(forced, 100, CFG)[0] is True
    assert after_window(drained, 100, 100, 1, CFG).override is Override.OPEN


events = st.lists(
    st.tuples(
        st.sampled_from(["send", "ok", "fail", "window"]),
        st.floats(min_value=0, max_value=3),
        st.integers(0, 30),
        st.integers(0, 30),
    ),
    max_size=60,
)


@given(events)
def test_property_never_more_probes_than_configured_and_no_send_while_cooling(seq) -> None:  # type: ignore[no-untyped-def]
    b, now = Breaker(), 0.0
    for kind, dt, calls, failures in seq:
        now += dt
        if kind == "send":
            allowed, b = request_send(b, now, CFG)
            if b.state is BreakerState.OPEN:
                assert not allowed and now - b.opened_at < CFG.cooldown_s
        elif kind in ("ok", "fail"):
            b = after_probe(b, kind == "ok", now, CFG)
        else:
            b = after_window(b, calls, min(calls, failures), now, CFG)
        assert 0 <= b.probes_started <= CFG.probes
        assert b.probe_successes < CFG.probes or b.state is BreakerState.CLOSED


@given(st.integers(0, 100), st.integers(0, 100))
def test_property_never_trips_below_min_calls(calls: int, failures: int) -> None:
    failures = min(failures, calls)
    tripped = after_window(Breaker(), calls, failures, 1, CFG).state is BreakerState.OPEN
    assert tripped == (calls >= CFG.min_calls and failures / max(calls, 1) >= CFG.failure_rate)


# -- the Redis board, as two workers see it ---------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def redis_pair() -> AsyncIterator[tuple[Redis, Redis]]:
    a = Redis.from_url("redis://127.0.0.1:6379/12")
    b = Redis.from_url("redis://127.0.0.1:6379/12")
    await a.flushdb()
    yield a, b
    await a.aclose()
    await b.aclose()


@pytest.mark.integration
async def test_a_breaker_opened_by_one_worker_stops_the_other(redis_pair) -> None:  # type: ignore[no-untyped-def]
    clock = Clock()
    worker_a = BreakerBoard(redis_pair[0], CFG, cache_s=1.0, clock=clock)
    worker_b = BreakerBoard(redis_pair[1], CFG, cache_s=1.0, clock=clock)
    assert await worker_b.acquire("twilio")  # caches "closed"
    for _ in range(10):
        await worker_a.record("twilio", ok=False, latency_ms=30)
    assert (await worker_a.states(["twilio"]))["twilio"].state is BreakerState.OPEN
    clock.now += 1.01  # worker B's cache expires within about a second
    assert not await worker_b.acquire("twilio")
    stats = await worker_b.stats("twilio")
    assert stats.calls == 10 and stats.success_rate == 0 and stats.p95_ms == 30


@pytest.mark.integration
async def test_half_open_lets_exactly_the_probe_budget_through_across_workers(redis_pair) -> None:  # type: ignore[no-untyped-def]
    clock = Clock()
    boards = [BreakerBoard(r, CFG, cache_s=0, clock=clock) for r in redis_pair]
    for _ in range(10):
        await boards[0].record("sns", ok=False)
    clock.now += CFG.cooldown_s
    results = await asyncio.gather(*(boards[i % 2].acquire("sns") for i in range(20)))
    assert sum(results) == CFG.probes
    for _ in range(CFG.probes):
        await boards[1].record("sns", ok=True)
    assert (await boards[0].states(["sns"]))["sns"].state is BreakerState.CLOSED
    assert await boards[0].acquire("sns")


@pytest.mark.integration
async def test_manual_drain_and_force_close(redis_pair) -> None:  # type: ignore[no-untyped-def]
    board = BreakerBoard(redis_pair[0], CFG, cache_s=0)
    await board.force("ses", Override.OPEN)
    assert not await board.acquire("ses")
    await board.force("ses", None)
    assert await board.acquire("ses")
    for _ in range(10):
        await board.record("ses", ok=False)
    await board.force("ses", Override.CLOSED)
    assert await board.acquire("ses")
