"""Pure selection: which providers a message may take, in the order to try them, and why.

The first matching rule gives tiers. Tiers are tried in order; inside a tier only
healthy providers are tried, cheapest first. Equal costs are ordered at random in
proportion to their weights; a rule with ``split: weighted`` orders the whole tier by
weight alone. The result is the failover order of one delivery: on a transient failure
the next candidate is tried at once, then the next tier.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby

import phonenumbers

from herald.domain import Channel, Envelope
from router.rules import RoutingRules, Rule

Random = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Candidate:
    provider: str
    tier: int
    cost: float
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Considered:
    """One provider the rule allows, and what selection made of it (for explain)."""

    provider: str
    tier: int
    cost: float
    healthy: bool
    reason: str
    position: int | None  # its place in the failover order; None when skipped


@dataclass(frozen=True, slots=True)
class Plan:
    rule: str | None
    order: tuple[Candidate, ...]
    considered: tuple[Considered, ...]


def destination_country(channel: Channel, to: str) -> str | None:
    if channel is not Channel.SMS:
        return None
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(to, None))
    except phonenumbers.NumberParseException:
        return None


def message_country(message: Envelope) -> str | None:
    """The SMS destination's region: carried in the envelope by the API (which parsed the
    number once), or parsed here for an envelope that does not carry it."""
    if message.channel is not Channel.SMS:
        return None
    if message.country is not None:
        return message.country
    return destination_country(message.channel, message.to)


def matches(
    rule: Rule, channel: Channel, country: str | None, category: str, caller: str | None
) -> bool:
    return (
        (rule.channel is None or rule.channel == channel)
        and (rule.countries is None or country in rule.countries)
        and (rule.categories is None or category in rule.categories)
        and (rule.callers is None or caller in rule.callers)
    )


def match_rule(rules: RoutingRules, message: Envelope) -> Rule | None:
    return _first_match(rules, message, message_country(message))


def _first_match(rules: RoutingRules, message: Envelope, country: str | None) -> Rule | None:
    for rule in rules.rules:
        if matches(rule, message.channel, country, message.category.value, message.caller):
            return rule
    return None


def weighted_order(items: Sequence[Candidate], rand: Random) -> list[Candidate]:
    """A random order where each next item is drawn with probability ∝ its weight."""
    pool, out = list(items), []
    while pool:
        total = sum(c.weight for c in pool)
        point, acc = rand() * total, 0.0
        for i, c in enumerate(pool):
            acc += c.weight
            if point < acc or i == len(pool) - 1:
                out.append(pool.pop(i))
                break
    return out


def order_tier(tier: Sequence[Candidate], split: str, rand: Random) -> list[Candidate]:
    if split == "weighted":
        return weighted_order(tier, rand)
    ordered: list[Candidate] = []
    for _, same_cost in groupby(sorted(tier, key=lambda c: c.cost), key=lambda c: c.cost):
        ordered.extend(weighted_order(list(same_cost), rand))
    return ordered


def plan(
    rules: RoutingRules,
    message: Envelope,
    available: Mapping[str, bool] | None = None,
    *,
    rand: Random = random.random,
) -> Plan:
    """The failover order for ``message``; ``available`` maps provider → breaker allows it
    (a missing provider counts as available)."""
    available = available or {}
    if message.provider_override and message.provider_override in rules.providers:
        spec = rules.providers[message.provider_override]
        ok = available.get(spec.name, True)
        chosen = Candidate(spec.name, 0, spec.cost_for(None))
        reason = (
            "provider override (replay)" if ok else "provider override, but its breaker is open"
        )
        return Plan(
            None,
            (chosen,) if ok else (),
            (Considered(spec.name, 0, chosen.cost, ok, reason, 0 if ok else None),),
        )
    country = message_country(message)
    rule = _first_match(rules, message, country)
    if rule is None:
        return Plan(None, (), ())
    split = getattr(rule, "split", "cheapest")
    order: list[Candidate] = []
    considered: list[Considered] = []
    for tier_no, tier in enumerate(rule.tiers):
        in_tier = [
            Candidate(e.provider, tier_no, rules.providers[e.provider].cost_for(country), e.weight)
            for e in tier
        ]
        healthy = [c for c in in_tier if available.get(c.provider, True)]
        for c in in_tier:
            if c not in healthy:
                considered.append(
                    Considered(c.provider, tier_no, c.cost, False, "breaker open", None)
                )
        for c in order_tier(healthy, split, rand):
            position = len(order)
            order.append(c)
            considered.append(
                Considered(c.provider, tier_no, c.cost, True, _reason(position, c, split), position)
            )
    considered.sort(key=lambda c: (c.position is None, c.position or 0, c.tier))
    return Plan(rule.name, tuple(order), tuple(considered))


def _reason(position: int, c: Candidate, split: str) -> str:
    how = "by weight" if split == "weighted" else "cheapest healthy"
    if position == 0:
        return f"chosen: {how} in tier {c.tier}"
    return f"failover #{position}: next {how} (tier {c.tier})"


def candidates(rules: RoutingRules, message: Envelope) -> list[Candidate]:
    """Every allowed provider in failover order, assuming all are healthy."""
    return list(plan(rules, message).order)
