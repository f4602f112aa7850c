"""The accept path's shortcuts keep their meaning: all limits in one call, one number parse.

- ``hit_many`` decides like the same hits one after another (memory and Redis), stopping
  at the first refusal with the earlier keys spent; a request's limits cost one call.
- The number's region found by validation travels in the envelope; routing uses it, and
  parses the number itself for an envelope from before the field existed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from sqlalchemy import event

from config.settings import Settings
from herald.domain import Category, Channel, Envelope, EnvelopeError, Priority, utcnow
from herald.storage.db import make_engine, make_session_factory
from producer.auth import KeyStore, Principal
from producer.ratelimits import send_checks
from producer.validation import Limits, SendRequest, validate_send
from ratelimit import Decision, Limit, MemoryRateLimiter, RateLimiter, RedisRateLimiter
from ratelimit.guard import Check, Guard
from router.rules import parse_rules
from router.select import match_rule, plan
from tests.support.stack import free_port

REDIS_URL = os.environ.get("HERALD_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
NOW = 1_800_000_000.0


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


TIGHT = Limit(rate=2, period_s=60)
SLOW = Limit(rate=10, period_s=3600)


async def test_hit_many_decides_like_hits_in_order(limiter: RateLimiter) -> None:
    one_by_one = MemoryRateLimiter()
    requests = [("a", SLOW), ("b", TIGHT), ("c", SLOW)]
    for step in range(4):
        now = NOW + step
        expected: list[Decision] = []
        for key, limit in requests:
            decision = await one_by_one.hit(key, limit, now=now)
            expected.append(decision)
            if not decision.allowed:
                break
        assert await limiter.hit_many(requests, now=now) == expected, step
    # Refused at "b" on the third call and after: "a" was spent each time, "c" only twice
    # (a peek answers as if it spent one more).
    assert (await limiter.peek("a", SLOW, now=NOW + 3)).remaining == 10 - 4 - 1
    assert (await limiter.peek("c", SLOW, now=NOW + 3)).remaining == 10 - 2 - 1


async def test_hit_many_with_nothing_to_decide(limiter: RateLimiter) -> None:
    assert await limiter.hit_many([], now=NOW) == []


class Counting(RateLimiter):
    """Counts the calls a guard makes to the shared limiter."""

    def __init__(self, inner: RateLimiter) -> None:
        self.inner = inner
        self.single = 0
        self.many = 0

    async def hit(
        self, key: str, limit: Limit, *, cost: int = 1, now: float | None = None
    ) -> Decision:
        self.single += 1
        return await self.inner.hit(key, limit, cost=cost, now=now)

    async def peek(
        self, key: str, limit: Limit, *, cost: int = 1, now: float | None = None
    ) -> Decision:
        return await self.inner.peek(key, limit, cost=cost, now=now)

    async def reset(self, key: str) -> None:
        await self.inner.reset(key)

    async def hit_many(
        self, requests: Sequence[tuple[str, Limit]], *, now: float | None = None
    ) -> list[Decision]:
        self.many += 1
        return await self.inner.hit_many(requests, now=now)


async def test_every_limit_of_an_sms_send_is_one_redis_call(redis_client: Redis) -> None:
    shared = Counting(RedisRateLimiter(redis_client))
    guard = Guard(shared)
    principal = Principal("k1", "billing", frozenset({"send"}))
    checks = send_checks(Settings(), principal, Channel.SMS, "+447400123456", country="GB")
    assert [c.policy for c in checks] == ["api_key", "recipient", "sms_country", "sms_prefix"]
    assert [c.key for c in checks][2] == "sms-country:GB"
    verdict = await guard.check(checks)
    assert verdict.allowed and verdict.policy == "recipient"  # the tightest: 10 per minute
    assert (shared.many, shared.single) == (1, 0)
    for _ in range(9):
        assert (await guard.check(checks)).allowed
    refused = await guard.check(checks)
    assert not refused.allowed and refused.policy == "recipient"
    assert refused.decision is not None and refused.decision.retry_after_s > 0
    assert shared.single == 0


async def test_concurrent_requests_share_a_pipeline_and_still_count_exactly(
    redis_client: Redis,
) -> None:
    limiter = RedisRateLimiter(redis_client)
    burst = Limit(rate=5, period_s=3600)
    limiter._gcra_many.sha = "0" * 40  # as on a Redis without the script: NOSCRIPT, loaded
    answers = await asyncio.gather(
        *(limiter.hit_many([("shared", burst), (f"own-{i}", SLOW)]) for i in range(20))
    )
    allowed = [a for a in answers if a[0].allowed]
    assert len(allowed) == 5
    assert all(len(a) == 2 for a in allowed)  # the second key decided only when the first allowed
    assert all(len(a) == 1 for a in answers if not a[0].allowed)
    assert sorted(a[0].remaining for a in allowed) == [0, 1, 2, 3, 4]
    assert 1 <= limiter.pipelines < 20
    assert limiter._gcra_many.sha != "0" * 40


async def test_redis_down_still_fails_closed_limits_closed_and_others_open() -> None:
    down = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    try:
        guard = Guard(RedisRateLimiter(down))
        general = Check("api_key", "key:k1", TIGHT)
        otp = Check("otp_sends", "otp-sends:x", TIGHT, fail_closed=True)
        assert (await guard.check([general])).allowed  # the local limiter decides
        assert (await guard.check([general])).allowed
        refused = await guard.check([general])
        assert not refused.allowed and not refused.backend_down
        closed = await guard.check([Check("api_key", "key:k2", TIGHT), otp])
        assert not closed.allowed and closed.backend_down and closed.policy == "otp_sends"
    finally:
        await down.aclose()


# -- one parse of the number -----------------------------------------------------------

RULES = parse_rules(
    {
        "providers": {
            "india": {"type": "msg91", "channel": "sms", "cost": {"default": 0.002}},
            "world": {"type": "twilio", "channel": "sms", "cost": {"default": 0.008}},
        },
        "rules": [
            {"name": "india", "match": {"channel": "sms", "country": ["IN"]}, "tiers": [["india"]]},
            {"name": "rest", "match": {"channel": "sms"}, "tiers": [["world"]]},
        ],
    }
)


def envelope(to: str, country: str | None) -> Envelope:
    return Envelope(
        id="n1",
        channel=Channel.SMS,
        to=to,
        category=Category.TRANSACTIONAL,
        priority=Priority.NORMAL,
        country=country,
    )


def test_validation_finds_the_region_with_the_number() -> None:
    limits = Limits(max_body_chars=1000, max_metadata_bytes=1000)
    sms = SendRequest(channel="sms", to="+91 98765 43210", category="otp", body="x")
    valid = validate_send(sms, limits, utcnow())
    assert (valid.to, valid.country) == ("+919876543210", "IN")
    mail = SendRequest(channel="email", to="a@example.in", category="otp", subject="s", body="x")
    assert validate_send(mail, limits, utcnow()).country is None


def test_the_envelope_carries_the_region_and_routing_uses_it() -> None:
    carried = Envelope.from_bytes(envelope("+919876543210", "IN").to_bytes())
    assert carried.country == "IN"
    assert plan(RULES, carried).rule == "india"
    # Routing believes the carried region: it does not parse the number again.
    assert match_rule(RULES, envelope("+447400123456", "IN")).name == "india"  # type: ignore[union-attr]


def test_an_envelope_without_the_region_still_parses_and_routes_by_its_number() -> None:
    old = orjson.loads(envelope("+919876543210", None).to_bytes())
    del old["country"]
    parsed = Envelope.from_dict(old)
    assert parsed.country is None
    assert plan(RULES, parsed).rule == "india"
    assert plan(RULES, envelope("+447400123456", None)).rule == "rest"


def test_a_region_that_is_not_one_is_refused() -> None:
    bad = orjson.loads(envelope("+919876543210", "IN").to_bytes())
    bad["country"] = "IN; DROP"
    with pytest.raises(EnvelopeError, match="country"):
        Envelope.from_dict(bad)


# -- auth ------------------------------------------------------------------------------


async def test_concurrent_requests_with_an_uncached_key_share_one_lookup(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    lookups = 0

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        nonlocal lookups
        lookups += "FROM api_keys" in statement

    try:
        store = KeyStore(make_session_factory(engine), cache_s=60)
        key = await store.create("billing", ["send"])
        event.listen(engine.sync_engine, "before_cursor_execute", count)
        principals = await asyncio.gather(*(store.authenticate(key) for _ in range(20)))
        assert {p.name for p in principals if p is not None} == {"billing"}
        assert None not in principals
        assert lookups == 1
        assert await store.authenticate("hk_not-a-key") is None
        assert lookups == 2
    finally:
        await engine.dispose()
