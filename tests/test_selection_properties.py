"""Selection properties (hypothesis): health, tiers, cost, and weighted splits."""

from __future__ import annotations

import dataclasses
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from herald.domain import Category, Channel, Envelope, Priority
from router.rules import ProviderSpec, RoutingRules, Rule, TierEntry
from router.select import plan

MESSAGE = Envelope(
    id="n",
    channel=Channel.SMS,
    to="+447400123456",
    category=Category.TRANSACTIONAL,
    priority=Priority.NORMAL,
    body="b",
)
#: As the API hands it over: the region found when it parsed the number, so the 100,000
#: plans of the weighted-split property spend no time parsing it again (MESSAGE, without
#: it, keeps routing's own parse covered).
MESSAGE_WITH_REGION = dataclasses.replace(MESSAGE, country="GB")
NAMES = [f"p{i}" for i in range(6)]


@st.composite
def routing(draw):  # type: ignore[no-untyped-def]
    costs = {n: draw(st.sampled_from([0.001, 0.002, 0.005, 0.01])) for n in NAMES}
    providers = {
        n: ProviderSpec(n, "sandbox", Channel.SMS, {"default": c}) for n, c in costs.items()
    }
    tiers = draw(
        st.lists(
            st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True),
            min_size=1,
            max_size=3,
        )
    )
    rule = Rule(
        "r", Channel.SMS, None, None, None, tuple(tuple(TierEntry(p) for p in t) for t in tiers)
    )
    available = {n: draw(st.booleans()) for n in NAMES}
    return RoutingRules(providers, (rule,)), available


@given(routing(), st.randoms(use_true_random=False))
def test_never_an_open_provider_and_always_the_cheapest_healthy_of_the_first_usable_tier(
    case, rnd
) -> None:  # type: ignore[no-untyped-def]
    rules, available = case
    result = plan(rules, MESSAGE, available, rand=rnd.random)
    assert all(available[c.provider] for c in result.order)
    tiers = rules.rules[0].tiers
    usable = [t for t, tier in enumerate(tiers) if any(available[e.provider] for e in tier)]
    if not usable:
        assert result.order == ()
        return
    first_tier = usable[0]
    first = result.order[0]
    assert first.tier == first_tier
    healthy_costs = [
        rules.providers[e.provider].cost_for(None)
        for e in tiers[first_tier]
        if available[e.provider]
    ]
    assert first.cost == min(healthy_costs)
    # tiers never go backwards in the failover order, and costs rise within a tier
    for a, b in zip(result.order, result.order[1:], strict=False):
        assert a.tier <= b.tier
        assert a.tier < b.tier or a.cost <= b.cost


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=2, max_size=4), st.integers(0, 2**32))
def test_weighted_split_among_equal_costs_is_within_a_few_percent(
    weights: list[int], seed: int
) -> None:
    names = [f"w{i}" for i in range(len(weights))]
    providers = {n: ProviderSpec(n, "sandbox", Channel.SMS, {"default": 0.01}) for n in names}
    tier = tuple(TierEntry(n, float(w)) for n, w in zip(names, weights, strict=True))
    rules = RoutingRules(providers, (Rule("r", Channel.SMS, None, None, None, (tier,)),))
    rnd = random.Random(seed)
    draws = 10_000
    firsts = [
        plan(rules, MESSAGE_WITH_REGION, rand=rnd.random).order[0].provider for _ in range(draws)
    ]
    for name, weight in zip(names, weights, strict=True):
        share = firsts.count(name) / draws
        assert abs(share - weight / sum(weights)) < 0.03, (name, share, weights)


def test_explain_lists_every_candidate_with_its_reason() -> None:
    providers = {
        "cheap": ProviderSpec("cheap", "sandbox", Channel.SMS, {"default": 0.001}),
        "dear": ProviderSpec("dear", "sandbox", Channel.SMS, {"default": 0.01}),
        "backup": ProviderSpec("backup", "sandbox", Channel.SMS, {"default": 0.0001}),
    }
    tiers = ((TierEntry("dear"), TierEntry("cheap")), (TierEntry("backup"),))
    rules = RoutingRules(providers, (Rule("sms", Channel.SMS, None, None, None, tiers),))
    result = plan(rules, MESSAGE, {"cheap": False})
    assert result.rule == "sms"
    assert [c.provider for c in result.order] == ["dear", "backup"]
    by_name = {c.provider: c for c in result.considered}
    assert by_name["dear"].reason.startswith("chosen") and by_name["dear"].position == 0
    assert by_name["cheap"].healthy is False and by_name["cheap"].reason == "breaker open"
    assert by_name["backup"].reason.startswith("failover #1") and by_name["backup"].tier == 1
