"""The routing-rules document (DESIGN §6) parsed into typed, immutable objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from herald.domain import Channel
from herald.errors import HeraldError

if TYPE_CHECKING:
    from router.validation import ValidationIssue

Split = Literal["cheapest", "weighted"]
SPLITS: tuple[Split, ...] = ("cheapest", "weighted")


class RulesError(HeraldError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    name: str
    type: str
    channel: Channel
    cost: dict[str, float]
    max_per_s: float | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    def cost_for(self, country: str | None) -> float:
        if country and country in self.cost:
            return self.cost[country]
        return self.cost.get("default", 0.0)


@dataclass(frozen=True, slots=True)
class TierEntry:
    provider: str
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    channel: Channel | None
    countries: frozenset[str] | None
    categories: frozenset[str] | None
    callers: frozenset[str] | None
    tiers: tuple[tuple[TierEntry, ...], ...]
    #: How a tier shares traffic: the cheapest healthy provider, or in proportion to weight.
    split: Split = "cheapest"


@dataclass(frozen=True, slots=True)
class RoutingRules:
    providers: dict[str, ProviderSpec]
    rules: tuple[Rule, ...]
    version: int = 1
    #: Warnings found by ``router.validation.parse_and_validate`` (not part of equality).
    warnings: tuple[ValidationIssue, ...] = field(default=(), compare=False)


def _as_set(value: Any, path: str) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return frozenset([value])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RulesError(path, "must be a string or a list of strings")
    return frozenset(value)


def _channel(value: Any, path: str) -> Channel:
    try:
        return Channel(value)
    except ValueError:
        choices = ", ".join(c.value for c in Channel)
        raise RulesError(path, f"unknown channel {value!r} (one of {choices})") from None


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RulesError(path, f"must be a number, not {value!r}")
    return float(value)


def _provider(name: str, spec: Any) -> ProviderSpec:
    path = f"providers.{name}"
    if not isinstance(spec, dict) or "type" not in spec or "channel" not in spec:
        raise RulesError(path, "needs 'type' and 'channel'")
    cost = spec.get("cost") or {"default": 0}
    if not isinstance(cost, dict):
        raise RulesError(f"{path}.cost", "must map countries (and 'default') to prices")
    return ProviderSpec(
        name=name,
        type=spec["type"],
        channel=_channel(spec["channel"], f"{path}.channel"),
        cost={k: _number(v, f"{path}.cost.{k}") for k, v in cost.items()},
        max_per_s=spec.get("max_per_s"),
        raw=spec,
    )


def _split(value: Any, path: str) -> Split:
    for split in SPLITS:
        if value == split:
            return split
    raise RulesError(path, f"must be one of {', '.join(SPLITS)}, not {value!r}")


def _tier_entry(item: Any, path: str, providers: dict[str, ProviderSpec]) -> TierEntry:
    if isinstance(item, str):
        entry = TierEntry(item)
    elif isinstance(item, dict) and isinstance(item.get("provider"), str):
        entry = TierEntry(item["provider"], _number(item.get("weight", 1), f"{path}.weight"))
    else:
        raise RulesError(path, "must be a provider name or {provider: NAME, weight: N}")
    if entry.provider not in providers:
        raise RulesError(path, f"unknown provider {entry.provider!r}")
    return entry


def _rule(i: int, rule: Any, providers: dict[str, ProviderSpec]) -> Rule:
    path = f"rules[{i}]"
    if not isinstance(rule, dict):
        raise RulesError(path, "must be a mapping with 'match' and 'tiers'")
    match = rule.get("match") or {}
    if not isinstance(match, dict):
        raise RulesError(f"{path}.match", "must be a mapping")
    tiers = rule.get("tiers") or []
    if not isinstance(tiers, list) or not all(isinstance(t, list) for t in tiers):
        raise RulesError(f"{path}.tiers", "must be a list of lists of providers")
    return Rule(
        name=str(rule.get("name", f"rule-{i}")),
        channel=_channel(match["channel"], f"{path}.match.channel")
        if match.get("channel")
        else None,
        countries=_as_set(match.get("country"), f"{path}.match.country"),
        categories=_as_set(match.get("category"), f"{path}.match.category"),
        callers=_as_set(match.get("caller"), f"{path}.match.caller"),
        tiers=tuple(
            tuple(
                _tier_entry(item, f"{path}.tiers[{t}][{e}]", providers)
                for e, item in enumerate(tier)
            )
            for t, tier in enumerate(tiers)
        ),
        split=_split(rule.get("split", "cheapest"), f"{path}.split"),
    )


def parse_rules(doc: Any, *, version: int = 1) -> RoutingRules:
    """Parse a rules document; raise ``RulesError`` naming the path of the first problem."""
    if not isinstance(doc, dict):
        raise RulesError("$", "the document must be a mapping")
    raw_providers = doc.get("providers") or {}
    raw_rules = doc.get("rules") or []
    if not isinstance(raw_providers, dict):
        raise RulesError("providers", "must be a mapping of names to providers")
    if not isinstance(raw_rules, list):
        raise RulesError("rules", "must be a list")
    providers = {name: _provider(name, spec) for name, spec in raw_providers.items()}
    rules = tuple(_rule(i, rule, providers) for i, rule in enumerate(raw_rules))
    return RoutingRules(providers=providers, rules=rules, version=version)


def load_rules_file(path: Path) -> RoutingRules:
    with path.open() as fh:
        return parse_rules(yaml.safe_load(fh))
