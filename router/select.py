"""Pure selection: the first matching rule, then its providers tier by tier, cheapest first."""

from __future__ import annotations

from dataclasses import dataclass

import phonenumbers

from herald.domain import Channel, Envelope
from router.rules import RoutingRules, Rule


@dataclass(frozen=True, slots=True)
class Candidate:
    provider: str
    tier: int
    cost: float


def destination_country(channel: Channel, to: str) -> str | None:
    if channel is not Channel.SMS:
        return None
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(to, None))
    except phonenumbers.NumberParseException:
        return None


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
    country = destination_country(message.channel, message.to)
    for rule in rules.rules:
        if matches(rule, message.channel, country, message.category.value, message.caller):
            return rule
    return None


def candidates(rules: RoutingRules, message: Envelope) -> list[Candidate]:
    """Every provider the matching rule allows, in the order they should be tried."""
    if message.provider_override and message.provider_override in rules.providers:
        spec = rules.providers[message.provider_override]
        return [Candidate(spec.name, 0, spec.cost_for(None))]
    rule = match_rule(rules, message)
    if rule is None:
        return []
    country = destination_country(message.channel, message.to)
    ordered: list[Candidate] = []
    for tier_no, tier in enumerate(rule.tiers):
        tier_candidates = [
            Candidate(e.provider, tier_no, rules.providers[e.provider].cost_for(country))
            for e in tier
        ]
        weights = {e.provider: e.weight for e in tier}
        # Cheapest first; equal costs go to the heavier weight (the weighted split of
        # traffic among equals belongs to the full router).
        ordered.extend(sorted(tier_candidates, key=lambda c: (c.cost, -weights[c.provider])))
    return ordered
